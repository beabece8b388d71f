"""`smoothexplain archive` end to end: a user's own model.py, a TorchScript and an ONNX file
archived, checked, served by `smoothexplain serve` and explained; every broken case exits 2
with a message naming the problem; the CLI finds the running server through its record."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from serveproc import ServeProcess

from smoothexplain.client.cli import main as cli_main
from smoothexplain.client.remote import SmoothExplainClient, attribution
from smoothexplain.demo.lite0 import NAME as LITE0
from smoothexplain.demo.lite0 import main as lite0_main

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]

USER_MODEL = textwrap.dedent(
    '''
    """A user's model, defined outside the smoothexplain package."""
    import torch
    import torch.nn.functional as F
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self, classes: int = 4, width: int = 8) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.head = nn.Linear(width, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.bn(self.conv(x))).mean((2, 3)))


    class ReshapeNet(TinyNet):
        def forward(self, x):
            # an exporter without a dynamic first axis bakes x.shape[0] into the Reshape
            return self.head(F.relu(self.bn(self.conv(x))).mean((2, 3)).reshape(x.shape[0], -1))


    class NanNet(TinyNet):
        def forward(self, x):
            return super().forward(x) * float("nan")


    class IntNet(TinyNet):
        def forward(self, x):
            return super().forward(x).round().long()


    class ExitNet(TinyNet):
        def forward(self, x):
            import sys
            sys.exit(0)


    class LoopNet(TinyNet):
        def forward(self, x):
            while True:
                pass


    class LeakyNet(TinyNet):
        """Leaves a thread and a process running after its forwards."""
        def forward(self, x):
            import subprocess, threading, time
            if not getattr(self, "leaked", False):
                self.leaked = True
                threading.Thread(target=time.sleep, args=(300,)).start()
                subprocess.Popen(["sleep", "317.5"])
            return super().forward(x)


    class PairNet(TinyNet):
        def forward(self, x):
            return super().forward(x), x.mean((1, 2, 3))


    class FlatNet(TinyNet):
        def forward(self, x):
            return super().forward(x).unsqueeze(-1)
    '''
)
PRE = [
    "--size",
    "32",
    "--resize",
    "32",
    "--mean",
    "0.5",
    "0.5",
    "0.5",
    "--std",
    "0.25",
    "0.25",
    "0.25",
]


def namespace_model(name: str) -> torch.nn.Module:
    """A fresh instance of one of USER_MODEL's classes, compiled in this process."""
    namespace: dict[str, object] = {}
    exec(compile(USER_MODEL, "user_model.py", "exec"), namespace)
    model = namespace[name]()  # type: ignore[operator]
    assert isinstance(model, torch.nn.Module)
    return model.eval()


def _tiny() -> torch.nn.Module:
    model = namespace_model("TinyNet")
    with torch.no_grad():  # non-trivial BatchNorm statistics: train/eval differ
        model.bn.running_mean.uniform_(-0.5, 0.5)  # type: ignore[union-attr,operator]
        model.bn.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr,operator]
    return model.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("usermodel")
    torch.manual_seed(0)
    model = _tiny()
    (root / "user_model.py").write_text(USER_MODEL)
    torch.save(model.state_dict(), root / "tiny.pt")
    example = torch.zeros(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit.trace's and the legacy exporter's deprecation
        torch.jit.save(torch.jit.trace(model, example), str(root / "tiny_ts.pt"))
        torch.onnx.export(
            model,
            (example,),
            str(root / "tiny.onnx"),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "rows"}, "logits": {0: "rows"}},
        )
        reshaping = namespace_model("ReshapeNet")
        reshaping.load_state_dict(model.state_dict())
        torch.onnx.export(
            reshaping, (example,), str(root / "fixed.onnx"), dynamo=False, opset_version=17
        )
        torch.onnx.export(model, (example,), str(root / "opset19.onnx"), dynamo=False)
        trained = _tiny().train()
        torch.jit.save(torch.jit.trace(trained, example), str(root / "train_mode.pt"))
    (root / "labels.json").write_text(
        json.dumps({str(i): [f"n{i:08d}", f"class {i}"] for i in range(4)})
    )
    (root / "labels3.json").write_text(json.dumps({str(i): f"c{i}" for i in range(3)}))
    return {p.name: p for p in root.iterdir()}


def _archive(store: Path, name: str, *args: str) -> tuple[int, str]:
    """`smoothexplain archive` as a user runs it: its own process, exit status and output."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "smoothexplain.client.cli",
            "archive",
            name,
            "--store",
            str(store),
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


def _eager(files: dict[str, Path], cls: str = "TinyNet", weights: str = "tiny.pt") -> list[str]:
    return [
        "--model-file",
        str(files["user_model.py"]),
        "--model-class",
        cls,
        "--weights",
        str(files[weights]),
        *PRE,
    ]


@pytest.fixture(scope="module")
def store(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("store")
    built = [
        _archive(store, "user", *_eager(files), "--labels", str(files["labels.json"])),
        _archive(store, "user_ts", "--torchscript", str(files["tiny_ts.pt"]), *PRE),
        _archive(store, "user_onnx", "--onnx", str(files["tiny.onnx"]), *PRE),
        _archive(store, "user_pair", *_eager(files, "PairNet"), "--output", "0"),
    ]
    for code, output in built:
        assert code == 0, output
    assert "3 rows at once = one at a time" in built[0][1]
    assert "guided_backprop" in built[0][1] and "not applicable" in built[1][1]
    assert (
        "layout channels_last; BatchNorm2d folded into the convolution before it: 1" in built[0][1]
    )
    assert "BatchNorm2d not folded: TorchScript" in built[1][1]
    # CAM layers by the names a request gives: the eager model's own (its BatchNorm, which
    # folding removed from the model the input methods run), the ONNX model's converted ones
    assert "layers CAM default bn; 2 usable: conv, bn" in built[0][1]
    assert "layers CAM default " in built[2][1] and "layers none: " in built[1][1]
    return store


def _lite0(store: Path, artifacts: Path) -> None:
    """The demo's EfficientNet-Lite0 archive: `make model`'s copy, else built like it."""
    built = REPO_ROOT / "model_store" / f"{LITE0}.mar"
    if built.is_file():
        shutil.copyfile(built, store / built.name)
    else:
        assert lite0_main(["--store", str(store), "--artifacts", str(artifacts)]) == 0


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    _lite0(store, tmp_path_factory.mktemp("lite0"))
    names = ("user", "user_ts", "user_onnx", "user_pair", LITE0)
    models = [f"{n}={n}.mar" for n in names]
    with ServeProcess(tmp_path_factory.mktemp("serve") / "w", store, models) as serve:
        yield serve


def test_archived_models_serve_and_explain_like_the_original(
    server: ServeProcess, files: dict[str, Path]
) -> None:
    torch.manual_seed(0)
    reference = _tiny()
    x = torch.randn(3, 32, 32)
    with SmoothExplainClient(
        token_file=Path(server.endpoints["key_file"]), grpc_port=server.ports["grpc-inference"]
    ) as client:
        answers = {
            name: client.explain(name, x, method="gradient", nt_type="none", target=1)
            for name in ("user", "user_ts", "user_onnx", "user_pair")
        }
        labelled = client.predict("user", x, top_k=4)
    rows = x.unsqueeze(0).requires_grad_(True)
    reference(rows)[0, 1].backward()
    for name, answer in answers.items():
        assert not answer.HasField("error"), name
        torch.testing.assert_close(attribution(answer), rows.grad[0], rtol=1e-4, atol=1e-5)
    assert {s.label for s in labelled.top_k} == {f"class {i}" for i in range(4)}


def test_the_cli_finds_the_running_server_from_any_folder(
    server: ServeProcess, tmp_path: Path, files: dict[str, Path]
) -> None:
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 33), (200, 30, 90)).save(image)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SMOOTHEXPLAIN_") or k.endswith("STATE_DIR")
    }
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "smoothexplain"),
            "explain",
            str(image),
            "--model",
            "user",
            "--out",
            "heat.png",
            "--seed",
            "1",
            "--nt-samples",
            "4",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "heat.png").read_bytes().startswith(b"\x89PNG")
    assert "top class" in done.stdout


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_class", "cannot be imported"),
        ("wrong_keys", "unexpected keys"),
        ("tuple_output", "--output 0"),
        ("not_rows_classes", "(rows, classes)"),
        ("labels_mismatch", "3 labels"),
        ("fixed_batch_onnx", "fixed batch size"),
        ("train_mode_trace", "train mode"),
        ("onnx_opset_19", "opset_version=17"),
        ("nan_scores", "non-finite scores"),
        ("integer_scores", "floating-point scores"),
        ("exits_in_forward", "sys.exit(0)"),
        ("never_returns", "did not finish within 25 s"),
        ("resize_out_of_range", "preprocess.resize must be an integer in [1, 4096]"),
        ("clashing_extra_file", "named like a file the archive makes itself"),
    ],
)
def test_a_model_that_cannot_serve_exits_2_with_its_reason(
    case: str, message: str, files: dict[str, Path], tmp_path: Path
) -> None:
    clash = tmp_path / "model-config.yaml"
    clash.write_text("minWorkers: 1\n")
    bad_state = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(8, 3, 3, 3), "extra.bias": torch.zeros(2)}, bad_state)
    args = {
        "missing_class": _eager(files, "NoSuchNet"),
        "wrong_keys": [*_eager(files)[:4], "--weights", str(bad_state), *PRE],
        "tuple_output": _eager(files, "PairNet"),
        "not_rows_classes": _eager(files, "FlatNet"),
        "labels_mismatch": [*_eager(files), "--labels", str(files["labels3.json"])],
        "fixed_batch_onnx": ["--onnx", str(files["fixed.onnx"]), *PRE],
        "train_mode_trace": ["--torchscript", str(files["train_mode.pt"]), *PRE],
        "onnx_opset_19": ["--onnx", str(files["opset19.onnx"]), *PRE],
        "nan_scores": _eager(files, "NanNet"),
        "integer_scores": _eager(files, "IntNet"),
        "exits_in_forward": _eager(files, "ExitNet"),
        "never_returns": [*_eager(files, "LoopNet"), "--check-timeout", "25"],
        "resize_out_of_range": [*_eager(files), "--resize", "-5"],
        "clashing_extra_file": [*_eager(files), "--extra-files", str(clash)],
    }[case]
    code, output = _archive(tmp_path / "store", "broken", *args)
    assert code == 2, output
    assert message in output
    assert not (tmp_path / "store" / "broken.mar").exists()


def test_an_existing_archive_is_kept_unless_forced(files: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "user.mar").write_bytes(b"old")
    assert cli_main(["archive", "user", "--store", str(store), *_eager(files), "--no-check"]) == 2
    assert (store / "user.mar").read_bytes() == b"old"
    code, output = _archive(
        store, "user", "--model-store", str(store), *_eager(files), "--force", "--no-check"
    )
    assert code == 0, output
    assert (store / "user.mar").read_bytes()[:2] == b"PK"


def test_serve_stops_at_once_on_an_archive_that_can_never_load(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """An archive built with --no-check whose model class is missing: TorchServe would restart
    its worker until the startup timeout; serve reads the worker's refusal and exits with it."""
    store = tmp_path / "store"
    code, output = _archive(store, "broken", *_eager(files, "NoSuchNet"), "--no-check")
    assert code == 0, output
    serve = ServeProcess(tmp_path / "w", store, ["broken=broken.mar"])
    with pytest.raises(RuntimeError, match="serve did not start"):
        serve.start(timeout=200)
    log = serve.log.read_text()
    assert serve.returncode == 1, log
    assert "refused at load" in log and "broken: model_class" in log and "NoSuchNet" in log, log
    assert "not ready after" not in log, log  # it did not sit out --startup-timeout


def _readme_block(marker: str) -> str:
    text = (REPO_ROOT / "README.md").read_text()
    after = text[text.index(f"<!-- readme-test: {marker}") :]
    found = re.search(r"```bash\n(.*?)```", after, re.DOTALL)
    assert found is not None
    return found.group(1)


def test_the_readme_curl_lines_work_on_the_cat_photograph(
    server: ServeProcess, tmp_path: Path
) -> None:
    """The README's REST block, verbatim but for the port, in a folder laid out as `make run`
    leaves it (run/server/key_file.json, run/cat.png)."""
    from skimage import data

    (tmp_path / "run" / "server").mkdir(parents=True)
    (tmp_path / "run" / "server" / "key_file.json").symlink_to(server.endpoints["key_file"])
    from PIL import Image

    Image.fromarray(data.chelsea()).save(tmp_path / "run" / "cat.png")
    port = str(server.ports["inference"])
    script = _readme_block("rest").replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    assert script.count(port) == 2
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    decoder, answers, rest = json.JSONDecoder(), [], done.stdout.strip()
    while rest:
        answer, end = decoder.raw_decode(rest)
        answers.append(answer)
        rest = rest[end:].strip()
    predicted, explained = answers
    assert [s["label"] for s in predicted["top_k"][:3]] == ["Egyptian cat", "tabby", "tiger cat"]
    assert explained["attribution"]["shape"] == [3, 224, 224]
    assert explained["attribution"]["dtype"] == "DTYPE_FLOAT16"
    assert explained["seed"] == "7" and explained["target"] == 285


def _sleepers(mark: bytes) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == b"sleep\0" + mark + b"\0":
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_the_check_ends_what_the_model_left_running(files: dict[str, Path], tmp_path: Path) -> None:
    """A non-daemon thread does not keep the check alive; a process the model started is
    killed with the check's session."""
    code, output = _archive(tmp_path, "leaky", *_eager(files, "LeakyNet"), "--check-timeout", "120")
    assert code == 0, output
    assert _sleepers(b"317.5") == []
