"""The latent view (dgm.latent, ``dgm latent``): the projection is PCA's, the plane is the raw
codes, interpolations end at the reconstructions, traversals move the most active unit; runs
without an encoder are refused in one line."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import dgm
from dgm.cli import main
from dgm.config import save_config, validate
from dgm.errors import USAGE
from dgm.latent import latent_view, refusal

DATA = {"train_limit": 600, "test_limit": 120}


def tiny(latent_dim: int, **model) -> dict:
    return {
        "data": DATA,
        "model": {"latent_dim": latent_dim, "hidden": [32], **model},
        "train": {"epochs": 1, "batch_size": 50, "device": "cpu"},
    }


@pytest.fixture(scope="module")
def run4(tmp_path_factory):
    return dgm.fit(tiny(4), out=tmp_path_factory.mktemp("latent") / "d4")


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    return dgm.fit(tiny(2), out=tmp_path_factory.mktemp("latent") / "d2")


def encoder_means(run) -> np.ndarray:
    """E_q[z | x] of the test set straight from the run's encoder, in float64."""
    with torch.no_grad():
        return run.encode(run.data.x_test).mean.double().numpy()


def test_the_projection_is_onto_the_top_two_eigenvectors_of_the_means_covariance(run4):
    view = latent_view(run4)
    m = encoder_means(run4)
    np.testing.assert_allclose(view.means.numpy(), m, rtol=0, atol=1e-6)
    centred = view.means.numpy() - view.means.numpy().mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)  # C = V diag(s^2 / N) V^T
    expected = centred @ vt[:2].T  # (N, 2)
    signs = np.sign((expected * view.coords.numpy()).sum(0))  # an eigenvector's sign is free
    np.testing.assert_allclose(view.coords.numpy(), expected * signs, rtol=0, atol=1e-9)
    np.testing.assert_allclose(view.explained.numpy(), s[:2] ** 2 / (s**2).sum(), atol=1e-12)
    assert view.explained[0] >= view.explained[1] > 0
    comps = view.components.numpy()
    np.testing.assert_allclose(comps @ comps.T, np.eye(2), atol=1e-12)  # orthonormal
    assert view.axes[0] == f"PC1 ({100 * float(view.explained[0]):.1f}% of variance)"
    assert view.axes[1].startswith("PC2 (") and view.axes[1].endswith("% of variance)")
    assert view.labels is not None and torch.equal(view.labels, run4.data.test_labels.cpu())


def test_interpolations_end_at_the_reconstructions_of_the_two_images(run4):
    view = latent_view(run4, pairs=3, steps=5)
    assert view.interpolations.shape == (3, 5, 784)
    x = run4.data.x_test
    a, b = view.pairs[:, 0], view.pairs[:, 1]
    assert len(set(view.pairs.flatten().tolist())) == 6  # distinct test images
    torch.testing.assert_close(view.interpolations[:, 0], run4.reconstruct(x[a]))
    torch.testing.assert_close(view.interpolations[:, -1], run4.reconstruct(x[b]))
    middle = (view.means[a] + view.means[b]) / 2  # t = 1/2 of five steps
    torch.testing.assert_close(view.interpolations[:, 2], run4.decode(middle.float()).mean)


def test_the_traversal_moves_the_most_active_unit_over_the_priors_quantiles(run4):
    view = latent_view(run4, units=2)
    activity = encoder_means(run4).var(0)  # A_u = Var_x E_q[z_u | x]
    assert int(view.units[0]) == int(activity.argmax())
    assert activity[int(view.units[0])] >= activity[int(view.units[1])]
    np.testing.assert_allclose(view.activity.numpy(), activity, rtol=1e-6)
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = normal.icdf(view.quantiles)  # the prior's N(0, 1) marginals
    torch.testing.assert_close(view.values[:, 0], expected)
    assert view.quantile_source == "prior"
    z = view.means[view.base].repeat(len(view.quantiles), 1)  # (Q, d), the others kept
    z[:, int(view.units[0])] = expected.double()
    torch.testing.assert_close(view.traversals[0], run4.decode(z.float()).mean)


def test_the_view_leaves_the_global_rng_alone_and_a_seed_fixes_it(run4):
    before = torch.get_rng_state()
    first = latent_view(run4, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    again = latent_view(run4, seed=3)
    assert torch.equal(first.pairs, again.pairs) and first.base == again.base


def test_a_plane_is_shown_as_it_is_and_written_at_the_end_of_training(run2):
    assert (run2.path / "latent.png").is_file()  # latent_dim = 2: written by training
    record = json.loads((run2.path / "dgm-run.json").read_text())
    assert "latent.png" in record["files"]
    view = latent_view(run2)
    np.testing.assert_allclose(view.coords.numpy(), encoder_means(run2), atol=1e-6)
    assert view.axes == ("z1", "z2") and view.components is None and view.explained is None


def test_a_four_dimensional_run_has_no_latent_view_until_asked(run4, tmp_path, capsys):
    assert not (run4.path / "latent.png").exists()
    out = tmp_path / "mine.png"
    assert main(["latent", str(run4.path), "--out", str(out), "--units", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["path"] == str(out) and len(printed["units"]) == 2
    assert printed["axes"][0].startswith("PC1")
    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 800 and img.height > 400
    assert main(["latent", str(run4.path)]) == 0  # default: into the run, recorded
    assert capsys.readouterr().out.strip() == str(run4.path / "latent.png")
    record = json.loads((run4.path / "dgm-run.json").read_text())
    assert "latent.png" in record["files"] and "mine.png" not in record["files"]


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"model": {"kind": "gan"}}, "a 'gan' run has no encoder q(z | x)"),
        ({"model": {"kind": "diffusion"}}, "a 'diffusion' run has no encoder q(z | x)"),
        ({"model": {"kind": "rbm"}}, "a 'rbm' run has no encoder"),
        (
            {"model": {"kind": "ppca"}, "data": {"binarize": "none"}},
            "a 'ppca' run has no encoder",
        ),
        ({"inference": {"kind": "local"}}, "per-datapoint tables"),
    ],
)
def test_runs_without_an_encoder_are_refused_in_one_line(tmp_path, capsys, config, words):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(validate(config), run_dir / "config.json")  # refused before anything is loaded
    assert main(["latent", str(run_dir)]) == USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and str(run_dir) in err
    assert not (run_dir / "latent.png").exists()


def test_the_library_refuses_what_the_command_refuses():
    assert refusal(validate({})) is None and refusal(validate({"model": {"kind": "ae"}})) is None
    gan = validate({"model": {"kind": "gan"}})

    class Holder:
        config, model, posterior, data = gan, None, None, None

    with pytest.raises(dgm.UsageError, match="'gan' run has no encoder"):
        latent_view(Holder())
