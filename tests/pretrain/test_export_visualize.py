"""`lsmae export` and `lsmae visualize`, and gradient checkpointing's equivalence."""
import numpy as np
import torch
from PIL import Image

import pretrain
from bridges.cli import main
from pretrain.models.masking import block_mask_indices
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


def test_visualize_grid(tmp_path, lsmae_home, photos, capsys):
    images = sorted(photos.iterdir())[:3]
    out = tmp_path / "recon.png"
    assert main(["visualize", "demo", *map(str, images), "-o", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(out)
    with Image.open(out) as picture:
        assert picture.size == (4 * 64, 3 * 64)  # original | masked | reconstruction | pasted, one row each
        pixels = torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32))
    original, masked, _, pasted = pixels[:64].split(64, dim=1)
    grey = (masked == masked[0, 0]).all(-1).float().mean()  # masked patches show the mean colour
    assert 0.6 < grey < 0.9
    visible = ~(masked == masked[0, 0]).all(-1)
    assert torch.allclose(pasted[visible], original[visible], atol=2)


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
