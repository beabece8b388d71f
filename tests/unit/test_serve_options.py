"""`smoothexplain serve` flags → TorchServe config keys (no server started here)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from smoothexplain.client.cli import build_parser
from smoothexplain.ops.exporter import TlsFiles
from smoothexplain.ops.serve import _overrides, _tls


def _args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *flags])


def test_management_stays_on_loopback_whatever_the_host() -> None:
    values = _overrides(_args("--host", "0.0.0.0"), None)
    assert values["management_address"] == "http://127.0.0.1:8081"
    assert values["grpc_management_address"] == "127.0.0.1"
    assert values["metrics_address"] == "http://0.0.0.0:8082"
    assert "disable_token_authorization" not in values  # token auth stays on by default
    split = _overrides(_args("--metrics-host", "0.0.0.0"), None)
    assert split["metrics_address"] == "http://0.0.0.0:8082"


def test_no_token_auth_only_on_loopback() -> None:
    assert _overrides(_args("--no-token-auth"), None)["disable_token_authorization"] == "true"
    with pytest.raises(SystemExit, match="loopback"):
        _overrides(_args("--no-token-auth", "--host", "0.0.0.0"), None)


def test_tls_flags_become_torchserve_keys(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    tls = _tls(_args("--tls-cert", str(cert), "--tls-key", str(key)))
    assert tls == TlsFiles(cert.resolve(), key.resolve())
    values = _overrides(_args("--inference-port", "9443"), tls)
    assert values["inference_address"] == "https://127.0.0.1:9443"
    assert values["enable_grpc_ssl"] == "true"
    assert (values["certificate_file"], values["private_key_file"]) == (str(cert), str(key))
    assert _tls(_args()) is None
    with pytest.raises(SystemExit, match="together"):
        _tls(_args("--tls-cert", str(cert)))


def test_key_lifetime_is_set_and_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    assert _overrides(_args(), None)["token_expiration_min"] == "60.0"  # TorchServe's default
    assert _overrides(_args("--token-expiration-min", "0.25"), None)["token_expiration_min"] == (
        "0.25"
    )
    no_auth = _overrides(_args("--no-token-auth", "--token-expiration-min", "5"), None)
    assert "token_expiration_min" not in no_auth
    for bad in ("0.1", "0", "-1", "nan", "1e7", "soon"):
        with pytest.raises(SystemExit):
            _args("--token-expiration-min", bad)
        assert "--token-expiration-min" in capsys.readouterr().err
