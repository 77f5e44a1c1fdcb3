"""`lsmae export` and `lsmae visualize`, and gradient checkpointing's equivalence."""
import numpy as np
import pytest
import torch
from PIL import Image

import pretrain
from bridges.cli import main
from pretrain.models.masking import block_mask_indices
from pretrain.panels import GAP, Layout, labelled_grid, scale_factor
from tests.conftest import TINY_MODEL


def _training_checkpoint(path, **overrides):
    torch.manual_seed(0)
    model = pretrain.create_model(TINY_MODEL, **overrides)
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 3,
                "scaler": None, "args": {"model": TINY_MODEL}}, path)
    return model


def test_export_cli_writes_release_format_and_verifies(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    model = _training_checkpoint(run / "checkpoint-3.pth")
    (run / "checkpoint-9.pth").write_bytes(b"damaged")  # newer but unreadable: skipped
    out = tmp_path / "mine.pth"
    assert main(["export", str(run), "-o", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(out)
    exported = torch.load(out, weights_only=True)
    assert list(exported) == ["model"]
    assert all(torch.equal(exported["model"][k], v) for k, v in model.state_dict().items())
    assert main(["verify", str(out)]) == 0


def test_export_of_an_empty_folder_is_an_error(tmp_path, capsys):
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "x.pth")]) == 1
    assert "no loadable checkpoint" in capsys.readouterr().err


def _panels(picture: np.ndarray, layout) -> list[list[np.ndarray]]:
    boxes = [[layout.panel_box(c, row) for c in range(layout.columns)] for row in range(layout.rows)]
    return [[picture[top:bottom, left:right] for left, top, right, bottom in row] for row in boxes]


def test_visualize_draws_a_titled_grid_with_each_images_loss(tmp_path, lsmae_home, photos, capsys):
    images = sorted(photos.iterdir())[:3]
    out = tmp_path / "recon.png"
    assert main(["visualize", "demo", *map(str, images), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == str(out)
    losses = [float(v) for v in lines[1].removeprefix("per image: ").split(", ")]
    with Image.open(out) as picture:
        page = np.asarray(picture.convert("RGB"))
    # 64-px photographs scaled up 3x (nearest) to 192-px panels; 4 columns, 3 rows, a note column
    layout = Layout((192, 192), columns=4, rows=3, note_width=layout_note_width(page), legend_height=0)
    assert page.shape[:2] == layout.size[::-1]
    background = (page == 255).all(-1)
    assert background[:, :GAP].all() and background[:, layout.panel_box(0, 0)[2]:][:, :GAP].all()
    panels = _panels(page, layout)
    for row, path in zip(panels, images):
        for panel in row:  # whole 3x3 blocks of one colour: nearest, by a whole factor
            assert (panel == panel[::3, ::3].repeat(3, 0).repeat(3, 1)).all()
        original, masked, _, pasted = (panel[::3, ::3].astype(np.float32) for panel in row)
        with Image.open(path) as source:
            assert np.abs(original - np.asarray(source.convert("RGB").resize((64, 64)), np.float32)).mean() < 8
        grey = (masked == masked[0, 0]).all(-1)  # masked patches show the mean colour
        assert 0.6 < grey.mean() < 0.9
        assert np.allclose(pasted[~grey], original[~grey], atol=2)
    # a title above every column, a note right of every row: ink where there are no panels
    title_band, (_, _, right, _) = ~background[:layout.title_height], layout.panel_box(3, 0)
    for c in range(4):
        left_c, _, right_c, _ = layout.panel_box(c, 0)
        assert title_band[:, left_c:right_c].any()
    for r in range(3):
        _, top, _, bottom = layout.panel_box(3, r)
        assert (~background[top:bottom, right + GAP:]).any()
    # the loss of each row is its own; the run's loss is their mean (masks of equal size)
    assert len(set(losses)) == 3
    assert float(lines[2].split(": ")[1].split()[0]) == pytest.approx(np.mean(losses), abs=1.5e-3)


def layout_note_width(page: np.ndarray) -> int:
    """The note column's width: the page's, less the four 192-px panels and their gaps."""
    return page.shape[1] - (GAP + 4 * (192 + GAP)) - GAP


def test_grid_scales_small_pictures_by_a_whole_factor_and_leaves_large_ones():
    assert [scale_factor(w, h) for w, h in ((64, 64), (32, 48), (100, 300), (192, 192), (448, 448))] == [3, 6, 2, 1, 1]
    small = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    page, layout = labelled_grid([[small, small]], ["a", "b"], legend=[((255, 0, 0), "red"), ((0, 0, 255), "blue")])
    assert layout.panel == (192, 192) and page.size == layout.size
    left, top, right, bottom = layout.panel_box(1, 0)
    assert np.array_equal(np.asarray(page)[top:bottom, left:right], np.asarray(small.resize((192, 192), Image.NEAREST)))
    legend = np.asarray(page)[layout.size[1] - layout.legend_height:]
    assert ((legend == (255, 0, 0)).all(-1)).any() and ((legend == (0, 0, 255)).all(-1)).any()
    with pytest.raises(ValueError, match="one size"):
        labelled_grid([[small, small.resize((32, 32))]], ["a", "b"])


def test_visualize_needs_a_decoder(tmp_path, photos, capsys):
    sd = _training_checkpoint(tmp_path / "full.pth").state_dict()
    encoder_only = {k: v for k, v in sd.items() if not k.startswith("decoder") and k != "mask_token"}
    torch.save({"model": encoder_only}, tmp_path / "enc.pth")
    image = str(next(photos.iterdir()))
    assert main(["visualize", str(tmp_path / "enc.pth"), image, "-o", str(tmp_path / "r.png")]) == 1
    assert "no decoder" in capsys.readouterr().err


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = pretrain.create_model(TINY_MODEL, norm_pix_loss=True)
    imgs = torch.randn(2, 3, 64, 64)
    keep, restore = block_mask_indices(2, 8, 0.75, 2, generator=torch.Generator().manual_seed(1))
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(imgs, keep, restore)[0].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])
