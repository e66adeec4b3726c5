"""cluster.yaml and cluster.onprem.yaml: Ray's own launcher checks, and the security properties.

`ray up` (ray.autoscaler._private.commands._bootstrap_config) runs, in order: prepare_config
(merge with the provider's defaults.yaml, fold setup commands, fill per-type worker counts),
the provider's resource detection, validate_config (ray-schema.json plus cross-field checks),
then the provider's bootstrap. validate_config on the raw YAML is not what Ray does and fails
on purpose (it wants fields only the defaults bring, e.g. cluster_synced_files), so the checks
below run on the prepared config. For AWS everything after prepare_config that calls AWS
(resource detection, bootstrap: IAM, key pair, subnets, security group) is left out; the
local provider's steps touch nothing, so the on-prem file goes through _bootstrap_config whole.
No test starts Ray or opens a connection.
"""
from __future__ import annotations

import argparse
import ipaddress
import re
import shlex
import tomllib
from pathlib import Path

import click
import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from ray.autoscaler._private.commands import _bootstrap_config
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.scripts.scripts import cli as ray_cli

ROOT = Path(__file__).resolve().parent.parent
AWS = ROOT / "cluster.yaml"
ONPREM = ROOT / "cluster.onprem.yaml"
DOCS = ROOT / "README.md"
CONFIGS = [pytest.param(AWS, id="aws"), pytest.param(ONPREM, id="onprem")]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def launcher_config(path: Path) -> dict:
    """The config as `ray up` has it once Ray has checked it, up to the first cloud API call."""
    raw = load(path)
    if raw["provider"]["type"] == "local":
        return _bootstrap_config(raw, no_config_cache=True)
    prepared = prepare_config(raw)
    validate_config(prepared)
    return prepared


def shell_commands(cmd: str) -> list[list[str]]:
    """A launcher command line split into simple commands (on ; && ||), each as argv."""
    return [shlex.split(part) for part in re.split(r";|&&|\|\|", cmd) if part.strip()]


def ray_start_argvs(commands: list[str]) -> list[list[str]]:
    return [argv[2:] for cmd in commands for argv in shell_commands(cmd) if argv[:2] == ["ray", "start"]]


def click_options(command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")}


def flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("-")]


# --- Ray's own validation --------------------------------------------------------------------------

@pytest.mark.parametrize("path", CONFIGS)
def test_passes_ray_launcher_validation(path):
    config = launcher_config(path)
    assert config["cluster_name"].startswith("raybench")
    assert config["head_node_type"] in config["available_node_types"]


def test_aws_prepared_config_keeps_ours():
    """prepare_config merges the top level of defaults.yaml *under* ours: a key we left out
    would come back with Ray's default (the AWS default binds the dashboard to 0.0.0.0)."""
    raw, prepared = load(AWS), launcher_config(AWS)
    for key in ("provider", "available_node_types", "head_start_ray_commands", "worker_start_ray_commands",
                "file_mounts", "setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert key in raw, f"cluster.yaml leaves {key} to Ray's AWS defaults"
    assert prepared["provider"] == raw["provider"]
    assert prepared["available_node_types"].keys() == raw["available_node_types"].keys()


BROKEN = {
    "unknown top-level key": (lambda c: c.update(max_worker=4), "max_worker"),
    "provider without type": (lambda c: c["provider"].pop("type"), "'type' is a required property"),
    "unknown auth key": (lambda c: c["auth"].update(ssh_password="x"), "ssh_password"),
    "node type without resources": (lambda c: c["available_node_types"]["cpu_worker"].pop("resources"),
                                    "'resources' is a required property"),
    "fractional resource": (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5), "0.5"),
    "unknown security_group key": (lambda c: c["provider"]["security_group"].update(GroupId="sg-1"), "GroupId"),
    "head type not a node type": (lambda c: c.update(head_node_type="nope"), "head_node_type"),
    "min_workers over max_workers": (
        lambda c: c["available_node_types"]["cpu_worker"].update(min_workers=c["max_workers"] + 1), "max_workers"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_same_validator_rejects_broken_config(name):
    """The check above can fail: each break, made to the config that passes, is refused by it."""
    mutate, message = BROKEN[name]
    config = launcher_config(AWS)
    mutate(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)) as err:
        validate_config(config)
    assert message in str(err.value)


def test_raw_yaml_with_unknown_key_is_rejected_through_prepare():
    broken = load(AWS) | {"dashboard_host": "127.0.0.1"}
    with pytest.raises(jsonschema.ValidationError, match="dashboard_host"):
        validate_config(prepare_config(broken))


@pytest.mark.parametrize("field", ["head_ip", "worker_ips"])
def test_onprem_without_addresses_is_rejected(field):
    broken = load(ONPREM)
    del broken["provider"][field]
    with pytest.raises(click.ClickException, match="worker_ips"):  # the launcher's abort
        _bootstrap_config(broken, no_config_cache=True)


# --- Security: nothing but SSH from outside; dashboard on 127.0.0.1 ----------------------------------

def test_aws_ingress_is_ssh_only_from_a_set_range():
    provider = load(AWS)["provider"]
    group = provider["security_group"]
    assert set(group) == {"GroupName", "IpPermissions"}
    assert group["IpPermissions"], "no inbound rule: Ray would add only its own (SSH from anywhere)"
    for rule in group["IpPermissions"]:
        assert rule["IpProtocol"] == "tcp" and rule["FromPort"] == rule["ToPort"] == 22, rule
        assert set(rule) <= {"IpProtocol", "FromPort", "ToPort", "IpRanges", "Ipv6Ranges"}, rule
        ranges = [r["CidrIp"] for r in rule.get("IpRanges", [])] + [r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])]
        assert ranges
        for cidr in ranges:
            assert ipaddress.ip_network(cidr).prefixlen > 0, f"SSH open to the whole internet: {cidr}"


def test_aws_every_node_type_uses_that_group():
    """A node_config naming its own groups or interfaces would bypass provider.security_group."""
    for name, node_type in load(AWS)["available_node_types"].items():
        own = {"SecurityGroupIds", "NetworkInterfaces"} & set(node_type["node_config"])
        assert not own, f"{name} sets {own}"


def test_aws_effective_rules_when_ray_fills_the_group():
    """What Ray authorizes on a group it fills: ours, all traffic from the cluster's own group,
    and SSH from 0.0.0.0/0 (which the README tells the user to revoke). Needs boto3, as `ray up` does:
    it is in the test extra, so this runs (never skips) wherever the tests do."""
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    ours = load(AWS)["provider"]["security_group"]["IpPermissions"]
    rules = _create_default_inbound_rules({"sg-raybench"}, ours)
    for rule in rules:
        if rule.get("UserIdGroupPairs"):
            assert [p["GroupId"] for p in rule["UserIdGroupPairs"]] == ["sg-raybench"]
            assert not rule.get("IpRanges")
        else:
            assert rule["IpProtocol"] == "tcp" and rule["FromPort"] == rule["ToPort"] == 22, rule
    assert any({"CidrIp": "0.0.0.0/0"} in r.get("IpRanges", []) for r in rules), \
        "Ray no longer adds SSH from anywhere: update README.md's cluster section and cluster.yaml"


@pytest.mark.parametrize("path", CONFIGS)
def test_dashboard_bound_to_localhost(path):
    config = launcher_config(path)
    heads = [a for a in ray_start_argvs(config["head_start_ray_commands"]) if "--head" in a]
    assert heads, "no `ray start --head`"
    for args in heads:
        assert "--dashboard-host=127.0.0.1" in args, args
        assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in args
        assert "--port=6379" in args
    every = [cmd for key in config if key.endswith("_commands") for cmd in config[key]]
    for args in ray_start_argvs(every):
        hosts = [a.split("=", 1)[1] for a in args if a.startswith("--dashboard-host=")]
        assert set(hosts) <= {"127.0.0.1"}, args
        assert "--include-dashboard=false" not in args or "--head" not in args
    workers = ray_start_argvs(config["worker_start_ray_commands"])
    assert workers and all("--address=$RAY_HEAD_IP:6379" in a and "--head" not in a for a in workers)


@pytest.mark.parametrize("path", CONFIGS)
def test_ray_start_flags_exist_in_installed_ray(path):
    known = click_options(ray_cli.commands["start"])
    config = launcher_config(path)
    for args in ray_start_argvs(config["head_start_ray_commands"] + config["worker_start_ray_commands"]):
        assert set(flags(args)) <= known, set(flags(args)) - known


@pytest.mark.parametrize("path", CONFIGS)
def test_nothing_secret_in_config(path):
    text = path.read_text()
    assert "PRIVATE KEY" not in text
    provider = load(path)["provider"]
    assert not {"aws_credentials", "aws_access_key_id", "aws_secret_access_key"} & set(provider)


# --- Setup: the project is installed on every node ----------------------------------------------------

@pytest.mark.parametrize("path", CONFIGS)
def test_setup_installs_the_project_everywhere(path):
    config = launcher_config(path)
    assert config["file_mounts"].get("~/raybench") == "."
    install = re.compile(r"\bpip install\b.*(-e|--editable) ~/raybench(\s|$)")
    # prepare_config has folded setup_commands into the head's and the workers' lists
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any(install.search(c) for c in config[key]), f"{key} does not install raybench"


@pytest.mark.parametrize("path", CONFIGS)
def test_setup_python_satisfies_requires_python(path):
    requires = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    versions = [m.group(1) for c in load(path)["setup_commands"] for m in [re.search(r"--python (3\.\d+)", c)] if m]
    assert versions and all(v in requires for v in versions), (versions, str(requires))


def test_aws_node_types():
    types = load(AWS)["available_node_types"]
    max_workers = load(AWS)["max_workers"]
    gpu = [n for n, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(types[n]["min_workers"] == 0 for n in gpu), "GPU nodes must exist and cost nothing idle"
    assert all(t.get("max_workers", 0) <= max_workers for t in types.values())
    for name, node_type in types.items():
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}", node_type["node_config"]["ImageId"]), name
    assert load(AWS)["provider"]["cache_stopped_nodes"] is False


def test_onprem_addresses():
    provider = load(ONPREM)["provider"]
    head = ipaddress.ip_address(provider["head_ip"])
    workers = [ipaddress.ip_address(w) for w in provider["worker_ips"]]
    assert workers and len(set(workers)) == len(workers) and head not in workers


# --- The README section's commands exist in the installed Ray ----------------------------------------

def doc_commands() -> list[list[str]]:
    """Every `ray ...` command line in README.md's bash blocks (continuation lines joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", DOCS.read_text(), flags=re.S)
    lines = [ln.split("  #", 1)[0] for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
    return [shlex.split(ln) for ln in lines if ln.strip().startswith("ray ")]


def test_docs_ray_commands_exist_with_their_flags():
    cmds = doc_commands()
    assert {"up", "dashboard", "down", "job", "rsync-down"} <= {c[1] for c in cmds}
    for argv in cmds:
        command, rest = ray_cli.commands[argv[1]], argv[2:]
        if hasattr(command, "commands"):  # a group: `ray job submit`
            command, rest = command.commands[rest[0]], rest[1:]
        own = rest[: rest.index("--")] if "--" in rest else rest
        assert set(flags(own)) <= click_options(command), (argv, set(flags(own)) - click_options(command))
        if argv[1] in {"up", "dashboard", "down", "rsync-down"}:
            assert own[0] in {"cluster.yaml", "cluster.onprem.yaml"} and (ROOT / own[0]).is_file()


def test_docs_sweep_command_parses(monkeypatch):
    from raybench.sweep import parse_args

    parsers, parse = [], argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args",
                        lambda self, *a, **k: (parsers.append(self), parse(self, *a, **k))[1])
    submits = [c for c in doc_commands() if c[1:3] == ["job", "submit"]]
    assert submits
    for argv in submits:
        entry = argv[argv.index("--") + 1:]
        assert entry[:3] == ["python", "-m", "raybench.sweep"]
        args = parse_args(entry[3:])
        known = set(parsers[-1]._option_string_actions)  # exact names: argparse would accept abbreviations
        assert set(flags(entry[3:])) <= known, set(flags(entry[3:])) - known
        assert args.address == "auto" and Path(args.results).is_absolute()
        assert (ROOT / "sweeps" / f"{args.sweep}.yaml").is_file()
