"""deploy/: the systemd unit is valid and hardened, the environment file names real settings, the
nginx configuration parses."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "wce.service"


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """Key -> every value given in the unit (systemd allows repeats)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def stop_timeout() -> float:
    """TimeoutStopSec of the unit, in seconds (what the SIGTERM test must stay within)."""
    return float(unit_settings()["TimeoutStopSec"][0])


def test_unit_is_hardened_as_documented() -> None:
    s = {k: v[-1] for k, v in unit_settings().items()}
    assert s["User"] == "wce" and s["Group"] == "wce"
    assert s["ProtectSystem"] == "strict"
    assert s["ReadWritePaths"] == "/var/lib/wce" and s["StateDirectory"] == "wce"
    for key in ("PrivateTmp", "NoNewPrivileges", "ProtectHome", "PrivateDevices", "RestrictSUIDSGID",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups", "LockPersonality"):
        assert s[key] == "yes", key
    assert s["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert s["CapabilityBoundingSet"] == ""
    assert s["MemoryMax"] and s["TasksMax"]
    assert s["KillMode"] == "mixed" and s["KillSignal"] == "SIGTERM"
    # the stop timeout leaves room for the server's own graceful drain (10 s) and worker stop (10 s)
    assert stop_timeout() >= 30
    # the per-worker rlimits must stay possible: setrlimit (@resources) is not filtered out
    assert not any("@resources" in v for v in unit_settings()["SystemCallFilter"] if v.startswith("~"))
    # the data folder of the env file is the unit's writable one
    env = dict(line.split("=", 1) for line in (DEPLOY / "wce.env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["WCE_DATA"] == "/var/lib/wce"


def test_env_file_names_only_real_settings() -> None:
    from wce.config import ENV

    names = [line.split("=", 1)[0] for line in (DEPLOY / "wce.env").read_text().splitlines()
             if line and not line.startswith("#")]
    assert names and set(names) <= set(ENV.values())
    assert {"WCE_HOST", "WCE_PORT", "WCE_DATA", "WCE_METRICS_TOKEN", "WCE_MAX_IMPORT_MB"} <= set(names)


def _verifiable_copy(tmp_path: Path) -> Path:
    """The unit with its install paths pointed at this checkout (verify checks that they exist)."""
    env = tmp_path / "wce.env"
    shutil.copy(DEPLOY / "wce.env", env)
    text = UNIT.read_text().replace("/opt/wce/.venv/bin/wce", str(Path(sys.executable).parent / "wce"))
    text = re.sub(r"^EnvironmentFile=.*$", f"EnvironmentFile={env}", text, flags=re.M)
    text = text.replace("file:///opt/wce/deploy/README.md", f"file://{DEPLOY / 'README.md'}")
    copy = tmp_path / "wce.service"
    copy.write_text(text)
    return copy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    r = subprocess.run(["systemd-analyze", "verify", str(_verifiable_copy(tmp_path))],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "wce.service" not in r.stderr, r.stderr  # no warning about our unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(_verifiable_copy(tmp_path))],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for wce\.service: ([\d.]+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, m.group(0)  # systemd calls < 2.0 "OK"; deploy/README.md quotes it


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (make test-cluster installs it)")
def test_nginx_cluster_config_parses(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;
events {{}}
http {{ access_log off; client_body_temp_path {tmp_path}; proxy_temp_path {tmp_path};
include {DEPLOY / "nginx-cluster.conf"}; }}
""")
    r = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("openssl") is None,
                    reason="nginx or openssl is not installed (make test-cluster installs nginx)")
def test_nginx_examples_of_the_guide_parse(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=wce.example.net",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    examples = {k: v for k, v in shipped_nginx_configs().items() if k.startswith("README.md")}
    assert examples
    for name, text in examples.items():
        site = tmp_path / "site.conf"
        site.write_text(re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};",
                               re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", text)))
        conf = tmp_path / "nginx.conf"
        conf.write_text(f"""pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;
events {{}}
http {{ access_log off; client_body_temp_path {tmp_path}; proxy_temp_path {tmp_path}; include {site}; }}
""")
        r = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (name, r.stderr)


FORWARDED_HEADERS = {("host", "$host"), ("x-forwarded-for", "$proxy_add_x_forwarded_for"), ("x-forwarded-proto", "$scheme")}
NGINX_TOKEN = re.compile(r"#[^\n]*|\"[^\"]*\"|'[^']*'|[{};]|[^\s{};]+")


Block = tuple[list[str], list[list[str]]]  # (header words, directives)


def nginx_proxy_blocks(text: str) -> list[tuple[Block, list[Block]]]:
    """Every block of an nginx configuration that has `proxy_pass`, with its enclosing blocks
    (innermost first), from a small tokenizer of nginx's syntax."""
    found: list[tuple[Block, list[Block]]] = []
    stack: list[Block] = [([], [])]
    words: list[str] = []

    def close(block: Block) -> None:
        if any(d[0] == "proxy_pass" for d in block[1]):
            found.append((block, list(reversed(stack))))

    for token in NGINX_TOKEN.findall(text):
        if token.startswith("#"):
            continue
        if token == ";":
            stack[-1][1].append(words)
            words = []
        elif token == "{":
            stack.append((words, []))
            words = []
        elif token == "}":
            close(stack.pop())
        else:
            words.append(token)
    close(stack.pop())
    return found


def nginx_proxies(text: str) -> list[tuple[list[str], set[tuple[str, str]]]]:
    """Every block that has `proxy_pass`: (its header, the headers it sets for the upstream). nginx
    inherits `proxy_set_header` from the enclosing block only when a block sets none of its own,
    and so does this."""
    found = []
    for block, outers in nginx_proxy_blocks(text):
        sets: set[tuple[str, str]] = set()
        for _, directives in [block, *outers]:
            sets = {(d[1].lower(), d[2].strip("\"'")) for d in directives if d[0] == "proxy_set_header" and len(d) == 3}
            if sets:
                break
        found.append((block[0], sets))
    return found


def shipped_nginx_configs() -> dict[str, str]:
    """deploy/*.conf for nginx, and the nginx examples of deploy/README.md."""
    configs = {p.name: p.read_text() for p in sorted(DEPLOY.glob("*.conf")) if "proxy_pass" in p.read_text()}
    for i, block in enumerate(re.findall(r"```nginx\n(.*?)```", (DEPLOY / "README.md").read_text(), flags=re.S)):
        configs[f"README.md example {i + 1}"] = block
    return configs


def test_nginx_configs_send_the_client_host_address_and_scheme() -> None:
    configs = shipped_nginx_configs()
    assert "nginx-cluster.conf" in configs and any(name.startswith("README.md") for name in configs)
    for name, text in configs.items():
        proxies = nginx_proxies(text)
        assert proxies, name
        for header, sets in proxies:
            assert FORWARDED_HEADERS <= sets, (name, header, sets)
    # the parser's own check: a location with a header of its own inherits none of the server's
    inner = nginx_proxies("server { proxy_set_header Host $host; location / { proxy_pass http://x; "
                          "proxy_set_header X-Forwarded-Proto $scheme; } }")
    assert inner == [(["location", "/"], {("x-forwarded-proto", "$scheme")})]


def nginx_buffering(text: str) -> list[tuple[list[str], str]]:
    """Every block with `proxy_pass`: (its header, its `proxy_buffering`, set there or inherited from
    an enclosing block, else nginx's default `on`)."""
    return [(block[0], next((d[1] for _, directives in [block, *outers] for d in directives
                             if d[0] == "proxy_buffering"), "on"))
            for block, outers in nginx_proxy_blocks(text)]


def test_nginx_configs_buffer_answers_except_event_streams() -> None:
    """Finding M3: with proxy_buffering off, a client that does not read holds a WCE connection (and
    the answer) for as long as it likes; nginx must take answers at once, except event streams."""
    cenv = "a" * 26
    for name, text in shipped_nginx_configs().items():
        blocks = nginx_buffering(text)
        events = [h for h, value in blocks if value == "off"]
        assert len(events) == 1 and events[0][:2] == ["location", "~"], (name, blocks)
        assert all(value == "on" for h, value in blocks if h != events[0]), (name, blocks)
        pattern = re.compile(events[0][2].strip("\"'"))
        for path in (f"/{cenv}/api/events", "/api/events"):  # path mode; subdomain mode (the cenv's own host)
            assert pattern.search(path), (name, path)
        for path in (f"/{cenv}/api/rows", f"/{cenv}/api/events/x", f"/{cenv}/fn/api/events", "/new", f"/{cenv}/"):
            assert not pattern.search(path), (name, path)


def test_env_file_trusts_the_proxy_on_this_host() -> None:
    from wce.gateway.forwarded import trusted_proxies

    env = dict(line.split("=", 1) for line in (DEPLOY / "wce.env").read_text().splitlines()
               if line and not line.startswith("#"))
    proxies = trusted_proxies(env["WCE_FORWARDED_ALLOW_IPS"])
    assert env["WCE_HOST"] == "127.0.0.1" and proxies is not None
    assert proxies.trusts_peer(("127.0.0.1", 40000)) and not proxies.trusts_peer(("192.0.2.1", 40000))


def test_litestream_config_replicates_every_cenv_file() -> None:
    text = (DEPLOY / "litestream.yml").read_text()
    assert "dir: /var/lib/wce" in text and 'pattern: "*.sqlite"' in text and "watch: true" in text
    # WCE's temporary names never match the pattern
    from fnmatch import fnmatch

    for temp in (".abc.1234.creating", ".abc.1234.importing", ".abc.1234.exporting", ".abc.1234.deleting"):
        assert not fnmatch(temp, "*.sqlite")


def test_docs_link_the_operations_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "deploy/README.md" in readme and "SECURITY.md" in readme
    guide = (DEPLOY / "README.md").read_text()
    assert "systemd-analyze security" in guide and "Overall exposure" in guide
