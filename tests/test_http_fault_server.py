"""Self-tests for the fault-injecting HTTP server used by downloader tests."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.http_fault_server import FaultServer, RequestRecord, fault_server  # noqa: F401

DATA = bytes(range(256)) * 1024  # 256 KiB, position-dependent content
PATH = "coco+unlabeled_dup5/x.pth"
QUOTED = "coco%2Bunlabeled_dup5/x.pth"


@pytest.fixture
def srv(fault_server: FaultServer) -> FaultServer:
    fault_server.add_file(PATH, DATA)
    return fault_server


def get(srv: FaultServer, path: str = QUOTED, **kw: object) -> requests.Response:
    return requests.get(srv.base_url + path, timeout=5, **kw)


def stream_all(resp: requests.Response) -> bytes:
    return b"".join(resp.iter_content(8192))


def test_plain_get_and_head(srv: FaultServer) -> None:
    r = get(srv)
    assert r.status_code == 200
    assert r.content == DATA
    assert r.headers["Content-Length"] == str(len(DATA))
    assert r.headers["Accept-Ranges"] == "bytes"

    h = requests.head(srv.base_url + QUOTED, timeout=5)
    assert h.status_code == 200 and h.content == b""
    assert h.headers["Content-Length"] == str(len(DATA))
    assert srv.count(PATH) == 1 and srv.count(PATH, "HEAD") == 1
    assert srv.count(PATH, method=None) == 2


@pytest.mark.parametrize("registered", [PATH, QUOTED])
@pytest.mark.parametrize("requested", [PATH, QUOTED])
def test_percent_escaped_paths_match_both_forms(
    fault_server: FaultServer, registered: str, requested: str
) -> None:
    fault_server.add_file(registered, b"abc")
    assert get(fault_server, requested).content == b"abc"
    assert fault_server.count(registered) == fault_server.count(requested) == 1


def test_unknown_path_is_404(srv: FaultServer) -> None:
    assert get(srv, "nope.bin").status_code == 404
    assert srv.requests[-1].status == 404


@pytest.mark.parametrize(
    "header, start, end",
    [("bytes=1000-", 1000, len(DATA) - 1), ("bytes=10-19", 10, 19),
     ("bytes=100-999999999", 100, len(DATA) - 1), ("bytes=-5", len(DATA) - 5, len(DATA) - 1)],
)
def test_range_206(srv: FaultServer, header: str, start: int, end: int) -> None:
    r = get(srv, headers={"Range": header})
    assert r.status_code == 206
    assert r.content == DATA[start : end + 1]
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert r.headers["Content-Length"] == str(end - start + 1)


def test_range_past_end_is_416(srv: FaultServer) -> None:
    r = get(srv, headers={"Range": f"bytes={len(DATA)}-"})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_ranges_disabled_serves_full_200(srv: FaultServer) -> None:
    srv.support_ranges = False
    r = get(srv, headers={"Range": "bytes=10-"})
    assert r.status_code == 200 and r.content == DATA


@pytest.mark.parametrize("range_header", [None, "bytes=1000-"])
def test_drop_gives_short_read_then_recovers(srv: FaultServer, range_header: str | None) -> None:
    srv.add_faults(PATH, "drop")
    headers = {"Range": range_header} if range_header else {}
    expected = DATA[1000:] if range_header else DATA
    r = get(srv, headers=headers, stream=True)
    assert int(r.headers["Content-Length"]) == len(expected)
    try:
        got = stream_all(r)
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError):
        pass
    else:
        assert len(got) < len(expected)
    assert srv.bytes_sent(PATH) == len(expected) // 2
    assert get(srv, headers=headers).content == expected  # queue was one fault deep


@pytest.mark.parametrize("fault", ["500", "503", "429", "404"])
def test_status_faults(srv: FaultServer, fault: str) -> None:
    srv.add_faults(PATH, fault)
    r = get(srv)
    assert r.status_code == int(fault)
    if fault in ("429", "503"):
        assert r.headers["Retry-After"] == "0"
    else:
        assert "Retry-After" not in r.headers
    assert get(srv).content == DATA


def test_wrong_length_is_detected(srv: FaultServer) -> None:
    srv.add_faults(PATH, "wrong_length")
    r = get(srv, headers={"Range": "bytes=100-"}, stream=True)
    assert int(r.headers["Content-Length"]) > len(DATA) - 100
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        stream_all(r)
    assert srv.bytes_sent(PATH) == len(DATA) - 100


def test_flip_corrupts_without_changing_length(srv: FaultServer) -> None:
    srv.add_faults(PATH, "flip")
    r = get(srv)
    assert r.status_code == 200
    assert len(r.content) == len(DATA) and r.content != DATA
    assert get(srv, headers={"Range": "bytes=5-"}).content == DATA[5:]


def test_slow_is_correct_but_slow(srv: FaultServer) -> None:
    srv.slow_delay = 0.02
    srv.add_faults(PATH, "slow")
    t0 = time.monotonic()
    assert get(srv).content == DATA
    assert time.monotonic() - t0 >= 4 * 0.02  # 256 KiB = 4 chunks of 64 KiB


def test_truncate_200_ignores_range_and_lies_consistently(srv: FaultServer) -> None:
    srv.add_faults(PATH, "truncate_200")
    r = get(srv, headers={"Range": "bytes=10-"})
    assert r.status_code == 200 and "Content-Range" not in r.headers
    assert r.content == DATA[: len(DATA) // 2]
    assert r.headers["Content-Length"] == str(len(DATA) // 2)


def test_fifo_order_then_persistent_then_clear(srv: FaultServer) -> None:
    srv.add_faults(PATH, "500", "429")
    srv.set_persistent_fault(PATH, "404")
    assert [get(srv).status_code for _ in range(4)] == [500, 429, 404, 404]
    srv.clear_faults(PATH)
    assert get(srv).status_code == 200


def test_unknown_fault_name_rejected(srv: FaultServer) -> None:
    with pytest.raises(ValueError):
        srv.add_faults(PATH, "dorp")


def test_bookkeeping(srv: FaultServer) -> None:
    get(srv)
    get(srv, headers={"Range": "bytes=10-19"})
    requests.head(srv.base_url + PATH, timeout=5)
    recs = srv.requests
    assert [tuple(r) for r in recs] == [
        (PATH, "GET", None, 200, len(DATA)),
        (PATH, "GET", "bytes=10-19", 206, 10),
        (PATH, "HEAD", None, 200, 0),
    ]
    assert isinstance(recs[0], RequestRecord)
    assert srv.count(PATH) == 2
    assert srv.bytes_sent(QUOTED) == len(DATA) + 10


def test_keep_alive_session_reuses_connection(srv: FaultServer) -> None:
    with requests.Session() as s:
        for _ in range(3):
            assert s.get(srv.base_url + QUOTED, timeout=5).content == DATA


def test_close_is_quick_with_slow_response_in_flight() -> None:
    srv = FaultServer()
    srv.add_file("big", DATA)
    srv.slow_delay = 5.0
    srv.set_persistent_fault("big", "slow")
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            stream_all(requests.get(srv.url("big"), stream=True, timeout=10))
        except Exception as e:  # expected: the server cuts us off
            errors.append(e)

    t = threading.Thread(target=fetch, daemon=True)
    t.start()
    while srv.count("big") == 0:
        time.sleep(0.01)
    t0 = time.monotonic()
    srv.close()
    assert time.monotonic() - t0 < 1.0
    t.join(timeout=2)
    assert not t.is_alive() and errors
