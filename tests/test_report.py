"""``dgm report``: one self-contained HTML page per run, every image a PNG data URI, every text
escaped; for every kind of run; and as headless Chromium renders it."""

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image

import dgm
from dgm.cli import main
from dgm.config import validate
from dgm.report import report_html
from dgm.train.run import prepare_new_run

DATA = ["--train-limit", "300", "--test-limit", "60", "--batch-size", "50", "--device", "cpu"]
VAE = ["--latent-dim", "3", "--hidden", "32", *DATA]
GAN = ["--model", "gan", "--latent-dim", "4", "--set", "gan.architecture=mlp"]
GAN += ["--set", "gan.hidden=[16]", *DATA]
HOSTILE = "<script>alert('x')</script> & \"quotes\""


class Page(HTMLParser):
    """The page's images (their attributes), headings and text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.headings: list[str] = []
        self.text: list[str] = []
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        self._in = tag

    def handle_data(self, data):
        self.text.append(data)
        if self._in in ("h2", "h3"):
            self.headings.append(data)


def png_of(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1], validate=True)))
    img.load()
    return img


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report") / "vae"
    assert main(["train", *VAE, "--epochs", "1", "--out", str(run_dir), "--quiet"]) == 0
    assert main(["eval", str(run_dir), "--k", "10", "--limit", "20", "--quiet"]) == 0
    (run_dir / "gradvar.json").write_text(
        json.dumps({"target": HOSTILE, "results": [{"k": 1, "variance": 12.5}, {"k": 10}]})
    )
    return run_dir


@pytest.fixture(scope="module")
def page(vae):
    assert main(["report", str(vae)]) == 0
    return (vae / "report.html").read_text(encoding="utf-8")


def test_every_image_is_an_embedded_png_and_the_numbers_are_on_the_page(vae, page):
    parsed = Page(page)
    assert len(parsed.images) >= 5  # curves, samples, training vs generated, recons, latent
    for attrs in parsed.images:
        img = png_of(attrs["src"])
        assert img.format == "PNG" and img.width > 10 and img.height > 10
    text = " ".join(parsed.text)
    config = json.loads((vae / "config.json").read_text())
    for key in ("latent_dim", "hidden", "estimator", "train_limit"):
        assert key in text
    assert "[32]" in text and str(config["train"]["seed"]) in text
    assert f"{config['train']['lr']:.6g}" in text
    [evaluation] = vae.glob("eval-*.json")
    result = json.loads(evaluation.read_text())
    assert evaluation.name in parsed.headings
    for key in ("log_likelihood", "elbo", "log_likelihood_stderr"):
        assert key in text and f"{result[key]:.6g}" in text
    last = dgm.load_run(vae).metrics[-1]
    assert f"{last['test_elbo']:.6g}" in text  # the final metrics row
    for section in ("Configuration", "Final metrics", "Training curves", "Samples"):
        assert section in parsed.headings
    assert {"Reconstructions", "Latent space", "Evaluations", "Versions"} <= set(parsed.headings)
    assert dgm.__version__ in text


def test_the_page_is_self_contained_and_escapes_what_it_shows(vae, page):
    assert "<script" not in page.lower()  # the hostile string is shown, never run
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)  # nothing fetched
    assert "default-src 'none'" in page
    assert "12.5" in page  # the list of records as a table
    record = json.loads((vae / "dgm-run.json").read_text())
    assert {"report.html", "latent.png"} <= set(record["files"])  # drawn, since missing


def test_runs_without_an_encoder_get_the_sections_that_apply(tmp_path, capsys):
    gan = tmp_path / "gan"
    assert main(["train", *GAN, "--epochs", "1", "--out", str(gan), "--quiet"]) == 0
    ppca = tmp_path / "ppca"
    argv = ["train", "--model", "ppca", "--latent-dim", "2", *DATA, "--quiet", "--out", str(ppca)]
    assert main(argv) == 0
    (gan / "curves.png").unlink()  # drawn again from metrics.jsonl
    for run_dir in (gan, ppca):
        out = tmp_path / f"{run_dir.name}.html"
        assert main(["report", str(run_dir), "--out", str(out)]) == 0
        parsed = Page(out.read_text(encoding="utf-8"))
        assert "Samples" in parsed.headings and "Configuration" in parsed.headings
        assert "Latent space" not in parsed.headings and "Reconstructions" not in parsed.headings
        assert not (run_dir / "latent.png").exists()
        for attrs in parsed.images:
            assert png_of(attrs["src"]).format == "PNG"
    gan_page = Page((tmp_path / "gan.html").read_text(encoding="utf-8"))
    assert "Training curves" in gan_page.headings
    assert any(a["alt"] == "training curves" for a in gan_page.images)
    assert "progress.png" in " ".join(gan_page.text)
    assert main(["report", str(tmp_path / "nothing")]) != 0
    assert "config.json" in capsys.readouterr().err


def test_a_run_with_no_checkpoint_yet_still_gets_its_page(tmp_path):
    run_dir = tmp_path / "new"
    config = {"model": {"latent_dim": 3}, "data": {"train_limit": 100, "test_limit": 20}}
    prepare_new_run(validate(config), run_dir)
    parsed = Page(report_html(run_dir))
    assert "Latent space" in parsed.headings and "Final metrics" not in parsed.headings
    assert "the latent view could not be drawn" in " ".join(parsed.text)
    assert parsed.images == []


def test_report_html_is_the_same_page_the_command_writes(vae, page):
    assert report_html(vae) == page


CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
    None,
)
#: added to a test copy only: once every image has loaded, write its natural width into the DOM
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) img.setAttribute("data-natural-width", img.naturalWidth);
  document.body.setAttribute("data-probe", "done");
});
</script>"""


def chromium(*args: str, profile) -> subprocess.CompletedProcess:
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)"
)
def test_headless_chromium_loads_every_image_and_draws_the_page(vae, page, tmp_path):
    n_images = len(Page(page).images)
    url = (vae / "report.html").resolve().as_uri()
    dom = chromium("--dump-dom", "--virtual-time-budget=5000", url, profile=tmp_path / "a").stdout
    assert len(Page(dom).images) == n_images  # the page as is, its policy in force
    # a test copy without the policy and with a probe: every image decoded to its natural width
    probe = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
    probe = probe.replace("</body>", PROBE + "</body>")
    copy = tmp_path / "probe.html"
    copy.write_text(probe, encoding="utf-8")
    dom = chromium(
        "--dump-dom", "--virtual-time-budget=5000", copy.as_uri(), profile=tmp_path / "b"
    ).stdout
    assert 'data-probe="done"' in dom
    widths = [int(a["data-natural-width"]) for a in Page(dom).images]
    expected = [png_of(a["src"]).width for a in Page(page).images]
    assert widths == expected and all(w > 0 for w in widths)
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,3000", url, profile=tmp_path / "c")
    with Image.open(shot) as img:
        assert img.size == (1200, 3000)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 50  # text, tables and pictures: not blank
        grey = img.convert("L")
        lo, hi = grey.getextrema()
        assert lo < 60 and hi > 200
