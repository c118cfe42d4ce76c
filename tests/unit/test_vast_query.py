"""Conformance of the offer query language with the official CLI (vastai 1.9.1), plus ``~``.

For every case the real CLI is run with ``--curl``: it prints the curl command for the
``POST /api/v0/bundles/`` it would send, body included, and exits without sending anything.
``build_search_body`` must produce that body exactly: same keys in the same order, same JSON
types (``"1"`` is not ``1``, ``16000.0`` is not ``16000``). Where the CLI refuses a query (or
crashes on it), ``parse_query`` must raise ``QueryError``.

Starting the CLI costs about a second, almost all of it imports, so the cases are batched: one
driver process imports the CLI once and forks a child per case that runs the CLI's own
``main()`` on that argv. One test also runs the real ``vastai`` executable, to show that the
driver changes nothing and that the CLI sends no request at all.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.mlops.vast.plugins.module_utils.vast_query import (
    ParsedQuery,
    QueryError,
    build_search_body,
    no_offer_reason,
    parse_order,
    parse_query,
)

CLI_VERSION = "1.9.1"
# Port 9 (discard) is closed here: if the CLI did try to send something, it would go nowhere.
DEAD_URL = "http://127.0.0.1:9"

# Real Vast GPU names (from the CLI's own vastai/data/query.py), as GET /gpu_names/unique/ spells them.
# fmt: off
GPU_NAMES = [
    "A10", "A100 PCIE", "A100 SXM4", "A100 SXM", "A100X", "A40", "B200", "GH200 SXM", "H100 PCIE", "H100 SXM",
    "H100 NVL", "H200", "H200 NVL", "L4", "L40", "L40S", "Tesla T4", "Tesla V100", "RTX 3060", "RTX 3080",
    "RTX 3090", "RTX 3090 Ti", "RTX 4070 Ti", "RTX 4080S", "RTX 4090", "RTX 4090D", "RTX 5090", "RTX A6000",
    "RTX 6000Ada", "RTX PRO 6000 WS", "InstinctMI250X",
]
# fmt: on


@dataclass(frozen=True)
class Case:
    """One ``vastai search offers`` invocation and the equivalent ``build_search_body`` call."""

    id: str
    query: str | list[str] | None  # a list is passed as several shell words
    flags: tuple[str, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def argv(self) -> list[str]:
        words = [] if self.query is None else [self.query] if isinstance(self.query, str) else list(self.query)
        return ["search", "offers", *words, *self.flags, "--url", DEAD_URL, "--curl"]


# fmt: off
ACCEPTED = [
    Case("seed", "reliability > 0.95 cuda_vers >= 12.4 gpu_ram >= 16"),
    Case("seed-order-dph", "reliability > 0.95 cuda_vers >= 12.4 gpu_ram >= 16", ("-o", "dph+"), {"order": "dph+"}),
    Case("seed-12.0", "reliability > 0.95 cuda_vers >= 12.0 gpu_ram >= 16"),
    Case("range-merges", "num_gpus>=2 num_gpus<=4"),
    Case("same-op-last-wins", "num_gpus>=2 num_gpus>=4 num_gpus<8"),
    Case("gpu-name-underscore", "gpu_name=RTX_4090"),
    Case("gpu-name-in", "gpu_name in [RTX_4090,A100_SXM4]"),
    Case("gpu-name-quoted", 'gpu_name="RTX 4090" num_gpus=1'),
    Case("gpu-name-quoted-underscore", 'gpu_name="A100_SXM4"'),
    Case("quoted-list", 'reliability>0.99 gpu_name in ["RTX 4090", "RTX 3090"] geolocation notin [CN,VN]'),
    Case("geolocation-in", "geolocation in [US,CA]"),
    Case("not-in", "geolocation not in [CN,VN]"),
    Case("nin", "geolocation nin [CN] gpu_name notin [A100_PCIE]"),
    Case("help-example", "reliability>0.99 num_gpus=4 geolocation in [TW,SE]"),
    Case("verified-any", "verified=any"),
    Case("rentable-any", "rentable=any gpu_ram>=24"),
    Case("wildcards-?-*", "verified=? external=* num_gpus=1"),
    Case("any-then-again", "verified=any verified=true"),
    Case("field-any-after-conditions", "gpu_name=RTX_4090 num_gpus=1 gpu_name=any"),
    Case("driver-version-dotted", "driver_version >= 535.86.05"),
    Case("driver-version-plain", "driver_version>=535 driver_version < 1.2.3"),
    Case("duration-days", "duration > 3"),
    Case("duration-fraction", "duration>=0.5 duration<1.5"),
    Case("cpu-ram", "cpu_ram>=64"),
    Case("gb-fields", "gpu_total_ram>=80 gpu_ram>0.5 gpu_ram<=24.5"),
    Case("gb-quoted", 'gpu_ram>="16"'),
    Case("disk-space", "disk_space>100"),
    Case("word-operators", "num_gpus gte 2 num_gpus lte 4 reliability gt 0.9 dph lt 1 inet_down eq 100"),
    Case("word-not-equal", "num_gpus neq 1 cpu_cores noteq 2 disk_bw not eq 3"),
    Case("extra-spaces", "num_gpus  >=  2   gpu_name  in  [RTX_4090]  reliability  gt  0.9"),
    Case("symbolic-equal", "num_gpus==1 cpu_cores!=2 pci_gen = 4"),
    Case("aliases", "dph<0.5 dlperf_usd>10 flops_usd>1 display_active=false cuda_vers>=12.1"),
    Case("booleans-and-null", "verified=False external=true rentable=True static_ip=null datacenter=None"),
    Case("list-booleans-stay-strings", "verified in [true,false]"),
    Case("empty-quoted-string", 'gpu_name=""'),
    Case("trailing-comma", "num_gpus>=2, gpu_ram>=16"),
    Case("brackets-on-eq", "gpu_name=[RTX_4090]"),
    Case("unknown-field-warns", "foo=bar num_gpus=1 cpu_arch=arm64 gpu_arch=nvidia"),
    Case("filter-named-limit", "limit=5 num_gpus=1"),
    Case("filter-named-order", "order=x type=y num_gpus=1"),
    Case("several-words", ["num_gpus=1", "gpu_ram>=24", "reliability", ">", "0.9"]),
    Case("tab-is-not-a-separator", "num_gpus=1\tgpu_ram>=24"),
    Case("tab-after-operator", "num_gpus >=\t2"),
    Case("eq-tilde-value", "gpu_name=~A100"),
    Case("no-query", None),
    Case("empty-query", ""),
    Case("no-default", "num_gpus=1", ("-n",), {"defaults": False}),
    Case("no-default-empty", None, ("--no-default",), {"defaults": False}),
    Case("type-bid", "num_gpus=1", ("-t", "bid"), {"offer_type": "bid"}),
    Case("type-interruptible", "num_gpus=1", ("-t", "interruptible"), {"offer_type": "interruptible"}),
    Case("flag-i", "num_gpus=1", ("-i",), {"offer_type": "bid"}),
    Case("flag-b", None, ("-b",), {"offer_type": "bid"}),
    Case("type-reserved", "num_gpus=1", ("-t", "reserved"), {"offer_type": "reserved"}),
    Case("flag-r", None, ("-r",), {"offer_type": "reserved"}),
    Case("flag-d", None, ("-b", "-d"), {"offer_type": "on-demand"}),
    Case("storage", "gpu_ram>=24", ("--storage", "50"), {"storage_gb": 50}),
    Case("storage-fraction", None, ("--storage", "12.5"), {"storage_gb": "12.5"}),
    Case("limit", "gpu_ram>=24", ("--limit", "7"), {"limit": 7}),
    Case("limit-zero-not-sent", None, ("--limit", "0"), {"limit": 0}),
    Case("limit-and-limit-filter", "limit=5", ("--limit", "3"), {"limit": "3"}),
    Case("order-two", None, ("-o", "num_gpus,total_flops-"), {"order": "num_gpus,total_flops-"}),
    Case("order-leading-minus", None, ("--order=-dph",), {"order": "-dph"}),
    Case("order-aliases", None, ("-o", "dph+,score-,cuda_vers-,dlperf_usd"),
         {"order": "dph+,score-,cuda_vers-,dlperf_usd"}),
    Case("order-empty", None, ("-o", ""), {"order": ""}),
    Case("order-both-signs", None, ("--order=-dph+, ,score",), {"order": "-dph+, ,score"}),
    Case("everything", "num_gpus>=2 gpu_name in [H100_SXM,H200] verified=any",
         ("-n", "-t", "interruptible", "-o", "dph+", "--limit", "20", "--storage", "100"),
         {"defaults": False, "offer_type": "interruptible", "order": "dph+", "limit": 20, "storage_gb": 100.0}),
]

# Queries the CLI refuses (it prints "Error: ..." or crashes with a traceback); each must be a
# QueryError for us whose message names the given token.
REJECTED = [
    ("gpu_name =~ A100", "'=~'"),
    ("gpu_name ~= A100", "'~='"),
    ("gpu_name like A100", "'like'"),
    ("num_gpus => 2", "'=>'"),
    ("num_gpus >> 2", "'>>'"),
    ("num_gpus ! 2", "'!'"),
    ("num_gpus", "'num_gpus'"),
    ("geolocation not  in [CN]", "'not'"),
    ("num_gpus gte2", "'gte2'"),
    ("gpu_name RTX_4090", "'RTX_4090'"),
    ("gpu_name=RTX 4090", "'4090'"),
    ("gpu_name = 'RTX 4090'", "single quotes"),
    ("num_gpus>=", "'num_gpus>='"),
    ("num_gpus>=2 ,gpu_ram>=16", "',gpu_ram>=16'"),
    ("(num_gpus>=2)", "'(num_gpus>=2)'"),
    ("num_gpus=1 \tgpu_ram>=24", "'\tgpu_ram>=24'"),
    ("num_gpus>=2 gpu_ram >= 16 > 3", "'>'"),
    ("gpu_name in []", "'gpu_name in []'"),
    ("gpu_name in [,]", "'gpu_name in [,]'"),
    ("rentable>any", "'rentable>any'"),
    ("verified != *", "'verified != *'"),
    ("gpu_ram>=abc", "'abc'"),
    ("gpu_ram>=24GB", "'24GB'"),
    ("duration > 3days", "'3days'"),
    ("cpu_ram=true", "'true'"),
    ("gpu_ram in [16,24]", "'in'"),
    ("gpu_ram >= inf", "'inf'"),
    ("duration > 1e400", "'1e400'"),
    ("driver_version >= 535.86", "'535.86'"),
    ('driver_version >= "535.86.05"', "'\"535.86.05\"'"),
    ("driver_version in [535.86.05]", "'in'"),
    ("driver_version notin [535.86.05,550.54.14]", "'notin'"),
    ("driver_version = 0.0.0", "'driver_version = 0.0.0'"),
    ("gpu_name ~ A100", None),  # the CLI has no regex operator: our extension, tested below
]
# fmt: on

DRIVER = r"""
import importlib, json, os, sys, traceback
cases = json.load(sys.stdin)
sys.argv = ["vastai"]  # argparse takes the program name from here when the parser is built
from vastai.cli.main import main
# Import what main() imports, once, so that each forked child only parses and runs.
for name in ("instances", "offers", "machines", "teams", "keys", "endpoints", "billing", "storage", "auth",
             "misc", "deployments", "metrics", "benchmarks", "price_increase", "repl", "update", "uninstall"):
    try:
        importlib.import_module("vastai.cli.commands." + name)
    except ImportError:
        pass
results = []
for index, argv in enumerate(cases):
    out_path, err_path = f"out.{index}", f"err.{index}"
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        sys.argv = ["vastai", *argv]
        try:
            main()
            code = 0
        except SystemExit as exc:  # what the interpreter would make of it
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    with open(out_path) as out, open(err_path) as err:
        results.append({"argv": argv, "rc": os.waitstatus_to_exitcode(status), "stdout": out.read(),
                        "stderr": err.read()})
sys.stdout.write(json.dumps(results))
"""


@dataclass(frozen=True)
class CliRun:
    rc: int
    stdout: str
    stderr: str

    def body(self) -> str | None:
        """The ``-d`` body of the printed curl command, checked to be the search request."""
        start = self.stdout.find("curl")
        if self.rc != 0 or start < 0:
            return None
        words = shlex.split(self.stdout[start:].replace("\\\n", " "))
        assert words[words.index("-X") + 1] == "POST", self.stdout
        assert words[-1] == f"{DEAD_URL}/api/v0/bundles/", self.stdout
        return words[words.index("-d") + 1]

    def unknown_fields(self) -> set[str]:
        return set(re.findall(r"Warning: Unrecognized field: (\S+), see list", self.stderr))


def cli_env(tmp: Path, url: str = DEAD_URL) -> dict[str, str]:
    """A private, offline configuration for the CLI: no update check, no gpu_names fetch, no role probe."""
    home, config, cache = tmp / "home", tmp / "config", tmp / "cache"
    for path in (home, config / "vastai", cache / "vastai"):
        path.mkdir(parents=True, exist_ok=True)
    # Fresh (< 24 h) cache of GET /api/v0/gpu_names/unique/: the CLI reads it instead of fetching.
    (cache / "vastai" / "gpu_names_cache.json").write_text(json.dumps({"gpu_names": GPU_NAMES}))
    # A known role: otherwise the first authenticated call is GET /users/current (and with --curl
    # the CLI would print that request's curl and exit before the search).
    (config / "vastai" / "vast_role").write_text("client")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VAST", "XDG_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(config), XDG_CACHE_HOME=str(cache), VASTAI_NO_UPDATE_CHECK="1",
               VAST_API_KEY="x", VAST_URL=url)
    return env


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], CliRun]:
    """Every case's CLI run, keyed by argv (one driver process for all)."""
    if importlib.util.find_spec("vastai") is None:
        pytest.skip("the official CLI (vastai, a dev dependency) is not installed")
    version = importlib.metadata.version("vastai")
    assert version == CLI_VERSION, f"conformance is pinned to vastai {CLI_VERSION}, found {version}: re-check first"
    tmp = tmp_path_factory.mktemp("vastai-cli")
    argvs = [case.argv() for case in ACCEPTED] + [Case(q, q).argv() for q, _ in REJECTED]
    proc = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(argvs), capture_output=True, text=True,
                          env=cli_env(tmp), cwd=tmp, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    return {tuple(r["argv"]): CliRun(r["rc"], r["stdout"], r["stderr"]) for r in json.loads(proc.stdout)}


def canonical(body: Any) -> str:
    # json.dumps keeps key order and tells 1 from 1.0 and "1" from 1, which == on dicts does not.
    return json.dumps(body)


@pytest.mark.parametrize("case", ACCEPTED, ids=[case.id for case in ACCEPTED])
def test_body_matches_cli(cli: dict[tuple[str, ...], CliRun], case: Case) -> None:
    run = cli[tuple(case.argv())]
    sent = run.body()
    assert sent is not None, f"the CLI refused it (rc {run.rc}): {run.stdout}{run.stderr}"
    ours = build_search_body(case.query, **case.kwargs)
    assert canonical(ours) == canonical(json.loads(sent))
    defaults = case.kwargs.get("defaults", True)
    assert set(parse_query(case.query, defaults=defaults).unknown_fields) == run.unknown_fields()


@pytest.mark.parametrize(("query", "token"), REJECTED, ids=[q for q, _ in REJECTED])
def test_cli_rejects_and_so_do_we(cli: dict[tuple[str, ...], CliRun], query: str, token: str | None) -> None:
    run = cli[tuple(Case(query, query).argv())]
    assert run.rc != 0 and run.body() is None, f"the CLI accepted {query!r}: {run.stdout}"
    if token is None:
        return
    with pytest.raises(QueryError) as error:
        parse_query(query)
    assert token in str(error.value), str(error.value)
    assert f'"{query}"' in str(error.value)  # and the query it came from


def test_driver_matches_real_executable(tmp_path: Path, cli: dict[tuple[str, ...], CliRun]) -> None:
    """The real ``vastai`` script gives the same output as the batching driver, and sends nothing."""
    script = Path(sys.executable).with_name("vastai")
    if not script.exists():
        pytest.skip(f"no vastai executable next to {sys.executable}")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        for case in (ACCEPTED[1], ACCEPTED[-1]):
            argv = [arg if arg != DEAD_URL else url for arg in case.argv()]
            proc = subprocess.run([str(script), *argv], capture_output=True, text=True, env=cli_env(tmp_path, url),
                                  timeout=60, check=False)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.replace(url, DEAD_URL) == cli[tuple(case.argv())].stdout
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected: neither gpu_names, users/current nor the search


# ------------------------------------------------------------------------------- the ~ extension

SEED_REGEX = "reliability > 0.95 cuda_vers >= 12.4 gpu_name ~ A100|RTX_4090|RTX_3090|H100 num_gpus=1"
SEED_MATCHES = ["A100 PCIE", "A100 SXM4", "A100 SXM", "A100X", "H100 PCIE", "H100 SXM", "H100 NVL", "RTX 3090",
                "RTX 3090 Ti", "RTX 4090", "RTX 4090D"]


def test_seed_regex_resolves_against_real_names() -> None:
    parsed = parse_query(SEED_REGEX)
    assert parsed.regex == {"gpu_name": "A100|RTX 4090|RTX 3090|H100"}  # _ is a space here too
    assert "gpu_name" not in parsed.filters
    resolved = parsed.resolve_gpu_names(GPU_NAMES)
    # Unanchored, like re.search: RTX 4090D and A100X match too; GH200 does not contain H100.
    assert resolved["gpu_name"] == {"in": SEED_MATCHES}
    assert "gpu_name" not in parsed.filters  # resolving does not change the parsed query


def test_seed_regex_body_is_the_cli_body_plus_in() -> None:
    without = build_search_body("reliability > 0.95 cuda_vers >= 12.4 num_gpus=1", order="dph+")
    body = build_search_body(SEED_REGEX, order="dph+", gpu_names=GPU_NAMES)
    assert body.pop("gpu_name") == {"in": SEED_MATCHES}
    assert canonical(body) == canonical(without)
    # Without the names, nothing is sent for the regex: the caller filters rows instead.
    assert canonical(build_search_body(SEED_REGEX, order="dph+")) == canonical(without)


def test_regex_case_insensitive_anchors_and_underscored_names() -> None:
    cli_cache_style = [name.replace(" ", "_") for name in GPU_NAMES]  # how the CLI caches them
    parsed = parse_query("gpu_name ~ ^rtx_40")
    assert parsed.resolve_gpu_names(cli_cache_style)["gpu_name"] == {"in": ["RTX 4070 Ti", "RTX 4080S", "RTX 4090",
                                                                           "RTX 4090D"]}
    assert parse_query("gpu_name~^H100_SXM$").resolve_gpu_names(GPU_NAMES)["gpu_name"] == {"in": ["H100 SXM"]}
    assert parse_query('gpu_name ~ "RTX 4090$|^L40"').resolve_gpu_names(GPU_NAMES)["gpu_name"] == {
        "in": ["L40", "L40S", "RTX 4090"]}
    assert parse_query("gpu_name ~ [AH]100X?$").resolve_gpu_names(GPU_NAMES)["gpu_name"] == {"in": ["A100X"]}


def test_regex_narrowed_by_an_explicit_in_list() -> None:
    parsed = parse_query("gpu_name in [A100_SXM4,H100_SXM,RTX_4090] gpu_name ~ SXM num_gpus>=2")
    resolved = parsed.resolve_gpu_names(GPU_NAMES)
    assert resolved["gpu_name"] == {"in": ["A100 SXM4", "H100 SXM"]}
    with pytest.raises(QueryError, match=r"gpu_name ~ H200"):
        parse_query("gpu_name in [A100_SXM4] gpu_name ~ H200").resolve_gpu_names(GPU_NAMES)


def test_regex_last_wins_and_any_clears_it() -> None:
    assert parse_query("gpu_name ~ A100 gpu_name ~ H100").regex == {"gpu_name": "H100"}
    parsed = parse_query("gpu_name ~ A100 num_gpus=1 gpu_name=any")
    assert parsed.regex == {}
    assert parsed.resolve_gpu_names(GPU_NAMES) == parsed.filters
    assert parse_query("cuda_vers ~ ^12").regex == {"cuda_max_good": "^12"}  # aliases apply


def test_regex_no_match_names_the_regex_and_some_names() -> None:
    with pytest.raises(QueryError) as error:
        build_search_body("gpu_name ~ B300|MI300", gpu_names=GPU_NAMES)
    message = str(error.value)
    assert "gpu_name ~ B300|MI300" in message
    assert "A10, A100 PCIE" in message


def test_invalid_regex_fails_at_parse_time() -> None:
    with pytest.raises(QueryError) as error:
        parse_query("num_gpus=1 gpu_name ~ A100(|H100")
    assert "'A100(|H100'" in str(error.value)
    assert "missing )" in str(error.value)
    with pytest.raises(QueryError, match=r"Invalid regex '\*'"):
        parse_query("geolocation ~ *")
    with pytest.raises(QueryError, match=r"Missing regex"):
        parse_query('gpu_name ~ ""')


def test_row_matches_applies_every_regex() -> None:
    parsed = parse_query("geolocation ~ ,_(US|CA)$ cpu_arch ~ ^AMD num_gpus>=1")
    assert parsed.regex == {"geolocation": ", (US|CA)$", "cpu_arch": "^AMD"}
    assert parsed.row_matches({"geolocation": "Texas, US", "cpu_arch": "amd64"})
    assert not parsed.row_matches({"geolocation": "Quebec, CA", "cpu_arch": "arm64"})
    assert not parsed.row_matches({"geolocation": "North Holland, NL", "cpu_arch": "amd64"})
    assert not parsed.row_matches({"geolocation": None, "cpu_arch": "amd64"})
    assert not parsed.row_matches({"cpu_arch": "amd64"})
    assert parse_query("num_gpus=1").row_matches({})  # no regex: every row passes
    seed = parse_query(SEED_REGEX)
    assert seed.row_matches({"gpu_name": "RTX 4090"})
    assert not seed.row_matches({"gpu_name": "RTX 5090"})


def test_the_cli_rejects_the_regex_operator(cli: dict[tuple[str, ...], CliRun]) -> None:
    run = cli[tuple(Case("gpu_name ~ A100", "gpu_name ~ A100").argv())]
    assert run.rc == 1 and "Unknown operator" in run.stdout
    assert parse_query("gpu_name ~ A100").regex == {"gpu_name": "A100"}


# ------------------------------------------------------------------------------- messages, API


def test_unknown_operator_message() -> None:
    with pytest.raises(QueryError) as error:
        parse_query("gpu_name =~ A100")
    assert str(error.value) == ('Unknown operator \'=~\' in "gpu_name =~ A100": use one of = != < <= > >= in notin, '
                                "or ~ for a regex")


def test_missing_operator_messages() -> None:
    with pytest.raises(QueryError, match=r"Missing operator and value after '4090' .*RTX_4090"):
        parse_query("gpu_name=RTX 4090")
    with pytest.raises(QueryError, match=r"Missing operator between 'gpu_name' and 'RTX_4090'"):
        parse_query("gpu_name RTX_4090")


def test_errors_are_value_errors() -> None:
    assert issubclass(QueryError, ValueError)


def test_warnings_for_unknown_fields() -> None:
    parsed = parse_query("gpu_nmae=RTX_4090 gpu_nmae!=A100 num_gpus=1")
    assert parsed.unknown_fields == ["gpu_nmae"]
    assert len(parsed.warnings) == 1 and "'gpu_nmae'" in parsed.warnings[0]
    assert parsed.filters["gpu_nmae"] == {"eq": "RTX 4090", "neq": "A100"}  # still sent, as the CLI does
    assert parse_query("dph<1 cuda_vers>=12").warnings == []  # aliases are known fields


@pytest.mark.parametrize(("text", "expected"), [
    ("dph+,score-", [["dph_total", "asc"], ["score", "desc"]]),
    (None, [["score", "desc"]]),
    ("", []),
    ("-dph", [["dph_total", "desc"]]),
    ("num_gpus,total_flops-", [["num_gpus", "asc"], ["total_flops", "desc"]]),
    (" dlperf_usd- , flops_usd+ ", [["dlperf_per_dphtotal", "desc"], ["flops_per_dphtotal", "asc"]]),
])
def test_parse_order(text: str | None, expected: list[list[str]]) -> None:
    assert parse_order(text) == expected


def test_parse_query_shape() -> None:
    parsed = parse_query(["num_gpus>=2", "num_gpus<=4"], defaults=False)
    assert isinstance(parsed, ParsedQuery)
    assert parsed.filters == {"num_gpus": {"gte": "2", "lte": "4"}}
    assert parse_query(None).filters == {"verified": {"eq": True}, "external": {"eq": False},
                                         "rentable": {"eq": True}}


def test_build_search_body_options() -> None:
    parsed = parse_query("gpu_ram>=24", defaults=False)
    body = build_search_body(parsed, order="dph", offer_type="bid", limit="7", storage_gb="20")
    assert canonical(body) == canonical({"gpu_ram": {"gte": 24000.0}, "order": [["dph_total", "asc"]],
                                         "type": "bid", "limit": 7, "allocated_storage": 20.0})
    # The CLI sends any -t text unchanged; we refuse it before any request.
    with pytest.raises(QueryError, match=r"Unknown offer type 'spot'"):
        build_search_body("", offer_type="spot")
    with pytest.raises(QueryError, match=r"limit must be a whole number"):
        build_search_body("", limit="seven")
    with pytest.raises(QueryError, match=r"storage_gb must be a finite number"):
        build_search_body("", storage_gb=float("nan"))


MARKET_NAMES = ["RTX_4090", "H100 SXM", "A100 PCIE"]


@pytest.mark.parametrize(("query", "unknown"), [
    ("gpu_name=RTX_4090", []),
    ('gpu_name="H100 SXM"', []),
    ("gpu_name=RTX_9999", ["RTX 9999"]),
    ("gpu_name=rtx_4090", ["rtx 4090"]),  # the server compares case-sensitively: this finds nothing
    ("gpu_name in [RTX_4090,B300]", ["B300"]),
    ("num_gpus=1", []),
])
def test_unknown_gpu_names(query: str, unknown: list[str]) -> None:
    assert parse_query(query).unknown_gpu_names(MARKET_NAMES) == unknown


def test_no_offer_reason_says_what_to_change() -> None:
    misspelt = no_offer_reason(parse_query("gpu_name=RTX_9999"), MARKET_NAMES)
    assert "'RTX 9999'" in misspelt and "A100 PCIE, H100 SXM, RTX 4090" in misspelt
    wrong_case = no_offer_reason(parse_query("gpu_name=rtx_4090"), MARKET_NAMES)
    assert "case-sensitive" in wrong_case and "'rtx 4090' is written 'RTX 4090'" in wrong_case
    plain = no_offer_reason(parse_query("gpu_ram > 4000"), MARKET_NAMES)
    assert plain == "no offer on the market matches 'gpu_ram > 4000'; loosen the query"
