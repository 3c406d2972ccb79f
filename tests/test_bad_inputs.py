"""Bad inputs on the command line and the API: every row of docs/errors.md, with the message the user gets."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import tkn
from tkn.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from tkn.cli import main
from tkn.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = "cnn6, dn10, dn40, resnet18, stn, tdn10, tdn40, tkn6, tresnet18, tstn"
DATASETS = "gtsrb, mnist, mnist-5k, pain, svhn, tlmnist, tlmnist-5k, tlmnist28-5k"
NOT_FINITE = "m must be finite, got non-finite values (NaN or inf) in (12, 2) tensor"
TINY = ["--model", "dn10", "--data", "mnist-5k", "--batch-size", "16", "--max-train-samples", "32",
        "--max-test-samples", "16", "--lr", "0.05", "--seed", "0", "--no-progress"]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``tkn ARGS`` in this process: ``(exit code, stdout, stderr)``."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(capsys, command: str, *args: str) -> str:
    """Run ``tkn COMMAND ARGS``, check the exit code 2 and the one-line ``tkn COMMAND: error: ...`` on stderr,
    return the message after the prefix."""
    code, _, err = cli(capsys, command, *args)
    assert code == 2
    prefix = f"tkn {command}: error: "
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, err
    return lines[0][len(prefix):]


def _save(path: Path, model, input_shape=(1, 28, 28), **extra) -> Path:
    return save_checkpoint(path, {"model": dict(model.spec), "model_state": model.state_dict(), "epoch": 1,
                                  "input_shape": list(input_shape), **extra})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Untrained TDN10 and TKN6 at 28x28, a TDN10 with a NaN centre, and three broken files."""
    root = tmp_path_factory.mktemp("bad-inputs")
    torch.manual_seed(0)
    tdn10 = create_model("tdn10", input_size=28)
    paths = {"tdn10": _save(root / "tdn10.pt", tdn10), "tkn6": _save(root / "tkn6.pt", create_model("tkn6"))}
    with torch.no_grad():
        next(layer for _, layer in tkn.target_layers(tdn10)).m[0, 0] = float("nan")
    paths["nan"] = _save(root / "nan.pt", tdn10, config={"data": "mnist-5k"})
    paths["random"] = root / "random.pt"
    paths["random"].write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                              dtype=torch.uint8).numpy().tobytes())
    whole = paths["tdn10"].read_bytes()
    paths["truncated"] = root / "truncated.pt"
    paths["truncated"].write_bytes(whole[: len(whole) // 2])
    paths["state_dict"] = root / "state_dict.pt"
    torch.save(create_model("tdn10").state_dict(), paths["state_dict"])
    return paths


# -- missing or corrupt checkpoints ---------------------------------------------------------------------------

def test_missing_checkpoint(tmp_path, capsys):
    path = tmp_path / "missing.pt"
    message = f"checkpoint {str(path)!r} does not exist (expected a .pt file written by tkn train)"
    assert one_line_error(capsys, "eval", "--checkpoint", str(path)) == message
    assert one_line_error(capsys, "bench", "--checkpoint", str(path), "--no-memory") == message
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        load_checkpoint(path)


@pytest.mark.parametrize("kind", ["random", "truncated"])
def test_corrupt_checkpoint(checkpoints, capsys, kind):
    path = checkpoints[kind]
    message = f"checkpoint {str(path)!r} is corrupt, truncated or not a tkn checkpoint (not a PyTorch archive)"
    assert one_line_error(capsys, "eval", "--checkpoint", str(path)) == message
    with pytest.raises(ValueError, match=re.escape(message)):
        model_from_checkpoint(path)


def test_a_plain_state_dict_is_not_a_checkpoint(checkpoints, capsys):
    path = checkpoints["state_dict"]
    message = f"checkpoint {str(path)!r} is not a tkn checkpoint (expected a dict with format='tkn-checkpoint')"
    assert one_line_error(capsys, "flops", "--checkpoint", str(path)) == message
    with pytest.raises(ValueError, match=re.escape("checkpoint must be a tkn checkpoint dict with 'model'")):
        model_from_checkpoint(torch.load(path, weights_only=True))


# -- inputs of the wrong size -----------------------------------------------------------------------------------

def test_wrong_channels_for_a_checkpoint(checkpoints, capsys):
    path = str(checkpoints["tdn10"])
    assert one_line_error(capsys, "flops", "--checkpoint", path, "--input-size", "3,28,28") == (
        "the model does not accept an input of size (3, 28, 28): "
        "input has 3 channels but the model expects in_channels=1")
    message = "input has 3 channels but the model expects in_channels=1"
    assert one_line_error(capsys, "bench", "--checkpoint", path, "--input-size", "3,28,28", "--no-memory",
                          "--batch", "1", "--repeats", "1") == message


def test_wrong_size_for_a_model_with_a_fixed_head(checkpoints, capsys):
    message = ("CNN6 built for input_size=(28, 28) expects features (128, 7, 7), got (128, 14, 14): "
               "its FC layers fix the input size; build it with the new input_size")
    assert one_line_error(capsys, "bench", "--checkpoint", str(checkpoints["tkn6"]), "--input-size", "1,56,56",
                          "--no-memory", "--batch", "1", "--repeats", "1") == message
    assert one_line_error(capsys, "eval", "--checkpoint", str(checkpoints["tkn6"]), "--data", "tlmnist-5k",
                          "--max-samples", "4", "--no-progress") == message
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model("tkn6", input_size=28).eval()(torch.rand(1, 1, 56, 56))


def test_malformed_input_size(capsys):
    message = "--input-size must be C,H,W: three positive ints (e.g. 1,28,28), got '{}'"
    assert one_line_error(capsys, "flops", "--model", "tkn6", "--input-size", "1,28") == message.format("1,28")
    assert one_line_error(capsys, "bench", "--model", "tkn6", "--input-size", "0,28,28",
                          "--no-memory") == message.format("0,28,28")


def test_wrong_tensors_on_the_api():
    model = create_model("tkn6", input_size=28).eval()
    with pytest.raises(ValueError, match=re.escape("input has 3 channels but the model expects in_channels=1")):
        model(torch.rand(1, 3, 28, 28))
    with pytest.raises(ValueError, match=re.escape("input must have rank 4 (N, C, H, W), got shape (1, 28, 28)")):
        model(torch.rand(1, 28, 28))
    layer = tkn.TargetConv2d(1, 4, 3)
    with pytest.raises(ValueError, match=re.escape("input has 3 channels but the layer expects 1 (N, C_in, H, W)")):
        layer(torch.rand(1, 3, 8, 8))


# -- unknown names ---------------------------------------------------------------------------------------------

def test_unknown_model_name(tmp_path, capsys):
    message = f"unknown model 'nosuch'; known models: {MODELS}"
    assert one_line_error(capsys, "flops", "--model", "nosuch") == message
    assert one_line_error(capsys, "train", "--model", "nosuch", "--data", "mnist-5k",
                          "--out", str(tmp_path / "run")) == message
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model("nosuch")


def test_unknown_data_set_name(checkpoints, tmp_path, capsys):
    message = f"unknown data set 'nosuch'; known data sets: {DATASETS}"
    assert one_line_error(capsys, "train", "--model", "dn10", "--data", "nosuch",
                          "--out", str(tmp_path / "run")) == message
    assert one_line_error(capsys, "eval", "--checkpoint", str(checkpoints["tdn10"]), "--data", "nosuch") == message
    with pytest.raises(ValueError, match=re.escape(f"name: unknown data set 'nosuch'; known: {DATASETS}")):
        tkn.data.load("nosuch", "train")
    with pytest.raises(ValueError, match=re.escape("split: expected one of train, test for mnist-5k, got 'val'")):
        tkn.data.load("mnist-5k", "val")


# -- non-finite window parameters ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [("m", float("nan")), ("s", float("inf"))])
def test_non_finite_window_parameters(name, value):
    layer = tkn.TargetConv2d(1, 4, 3)
    with torch.no_grad():
        getattr(layer, name)[1, 0] = value
    message = re.escape(f"{name} must be finite, got non-finite values (NaN or inf) in (4, 2) tensor")
    for call in (lambda: layer(torch.rand(1, 1, 8, 8)), lambda: layer.rois(8, 8), lambda: layer.attention(8, 8)):
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match="the model does not accept an input of size \\(1, 8, 8\\): " + message):
        tkn.flops.count(torch.nn.Sequential(layer), (1, 8, 8))


def test_a_checkpoint_with_a_nan_centre(checkpoints, capsys):
    assert one_line_error(capsys, "eval", "--checkpoint", str(checkpoints["nan"]), "--max-samples", "4",
                          "--no-progress") == NOT_FINITE
    assert one_line_error(capsys, "show", "--checkpoint", str(checkpoints["nan"])) == NOT_FINITE


# -- budgets ---------------------------------------------------------------------------------------------------

def test_an_unreachable_budget(tmp_path, capsys):
    message = ("target_speedup 20 is above the largest speed-up this model can reach, 5.781 (every ROI at its "
               "minimum width); lower the target or build the target layers with a smaller min_roi")
    with pytest.raises(ValueError, match=re.escape(message)):
        tkn.MacBudget(create_model("tkn6", input_size=28), (1, 28, 28), 20.0, 100)
    assert one_line_error(capsys, "train", "--model", "tkn6", "--data", "mnist-5k", "--target-speedup", "20",
                          "--epochs", "1", "--max-train-samples", "16", "--max-test-samples", "16",
                          "--no-progress", "--out", str(tmp_path / "run")) == message
    message = "target_speedup must be a finite number >= 1 (dense MACs / ROI MACs), got 0.5"
    with pytest.raises(ValueError, match=re.escape(message)):
        tkn.MacBudget(create_model("tkn6", input_size=28), (1, 28, 28), 0.5, 100)


# -- interrupted and repeated runs -------------------------------------------------------------------------------

@pytest.fixture
def interrupted(tmp_path):
    """A 2-epoch run stopped by Ctrl-C (KeyboardInterrupt) right after epoch 1 was saved."""
    from tkn.training import TrainConfig, train

    out = tmp_path / "run"
    cfg = TrainConfig(model="dn10", data="mnist-5k", epochs=2, batch_size=16, max_train_samples=32,
                      max_test_samples=16, lr=0.05, seed=0, progress=False, out=str(out))

    def stop_after_first_epoch(line: str) -> None:
        if line.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, log=stop_after_first_epoch)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    return out


def test_ctrl_c_is_one_line_and_exit_code_130(tmp_path, capsys, monkeypatch):
    import tkn.training.loop as loop

    def interrupted_train(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted_train)
    code, _, err = cli(capsys, "train", *TINY, "--epochs", "1", "--out", str(tmp_path / "run"))
    assert (code, err) == (130, "tkn: interrupted\n")


def test_an_interrupted_run_resumes_at_its_next_epoch(interrupted, capsys):
    code, out, _ = cli(capsys, "train", "--out", str(interrupted), "--resume")
    assert code == 0
    assert "epoch 2/2" in out and "epoch 1/2" not in out
    assert load_checkpoint(interrupted / "last.pt")["epoch"] == 2


def test_restarting_without_resume_is_refused(interrupted, capsys):
    assert one_line_error(capsys, "train", *TINY, "--epochs", "2", "--out", str(interrupted)) == (
        f"output folder {str(interrupted)!r} already holds a run (last.pt); pass --resume to continue it, "
        "--overwrite to start again, or choose another --out")


def test_resuming_with_another_configuration_is_refused(interrupted, capsys):
    assert one_line_error(capsys, "train", "--out", str(interrupted), "--resume", "--lr", "0.5") == (
        "cannot resume with a different configuration (lr: checkpoint 0.05 vs now 0.5)")


def test_resuming_a_finished_run_trains_nothing(interrupted, capsys):
    assert cli(capsys, "train", "--out", str(interrupted), "--resume")[0] == 0
    before = (interrupted / "last.pt").stat().st_mtime_ns
    code, out, _ = cli(capsys, "train", "--out", str(interrupted), "--resume")
    assert code == 0 and f"nothing to do: {str(interrupted)!r} already completed 2 of 2 epochs" in out
    assert (interrupted / "last.pt").stat().st_mtime_ns == before


def test_resuming_nothing(tmp_path, capsys):
    path = tmp_path / "empty" / "last.pt"
    assert one_line_error(capsys, "train", "--out", str(tmp_path / "empty"), "--resume") == (
        f"checkpoint {str(path)!r} does not exist (expected a .pt file written by tkn train)")


def test_a_study_restarted_without_resume_is_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--model", "tdn10", "--data", "mnist-5k", "--target-speedup", "1.2", "--no-baseline",
            "--epochs", "1", "--max-train-samples", "16", "--max-test-samples", "16", "--set", "batch_size=16",
            "--out", str(out)]
    assert cli(capsys, *args)[0] == 0
    assert one_line_error(capsys, *args) == (
        f"output folder {str(out / 'speedup-1.2')!r} already holds a run (last.pt); pass --resume to continue it, "
        "--overwrite to start again, or choose another --out")
    code, text, _ = cli(capsys, *args, "--resume")
    assert code == 0 and f"nothing to do: {str(out / 'speedup-1.2')!r} already completed 1 of 1 epochs" in text
