# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compile each Jinja template and conditional once, not at every use in every process.

ansible-core 2.19 compiles a template's source to Python (Jinja's parse, code generation and ``compile``, ~0.8 ms
on a 2-core controller) every time it templates it: the same ``when`` or task argument is compiled again for every
task, host and loop item, ~650 compilations in one train.yml's controller process, and again in every worker, and
again in every trial of a sweep. What Jinja's compiler produces is a code object that depends only on the source,
on the syntax settings it reads, and on how each filter and test it calls wants its arguments (the function's
``pass_context`` mark, read at compile time). It is bound to an environment only when a template object is made
from it (``Template.from_code``), which stays as Jinja does it. So:

- a controller process keeps the code objects it compiled (bounded), with the filters and tests each one calls
  and their marks, which must still be the same at each reuse (a role's own ``filter_plugins`` may shadow a name
  later in the play); a worker inherits them as it forks;
- the code of templates written in the collection's ``playbooks/`` and ``roles/`` (what every run and every trial
  templates; not ``group_vars``/``host_vars`` there) is also kept on disk, in a private folder under the user's
  cache, so that the next process (the next trial) loads it instead of compiling it. Nothing from elsewhere (extra
  vars, ``examples/``, inventory, a playbook outside those folders) is written.

The folder's files are loaded as code, so it is used only when nobody else can write to it or to a folder above
it, each file is opened without following links, only if it is this user's and not writable by others, and only
if its content matches the digest it carries. Each entry names the Python, Jinja and ansible-core it was compiled
by.

Written against ansible-core 2.19's templating internals (and Jinja 3.1); on anything else :func:`install` does
nothing. Template debugging (which writes each compiled source to a file) bypasses it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import importlib.util
import marshal
import os
import secrets
import stat
import sys
import types
import typing as t

# The layout of an entry (key, calls, code): another layout is another key.
ENTRY_FORMAT = 1

try:
    import jinja2
    from ansible._internal._datatag._tags import Origin
    from ansible._internal._templating import _engine, _jinja_bits
    from ansible.release import __version__ as ANSIBLE_CORE_VERSION
    from jinja2 import nodes
    from jinja2.environment import TemplateExpression
    from jinja2.exceptions import TemplateSyntaxError
    from jinja2.parser import Parser
    from jinja2.utils import _PassArg

    SUPPORTED = (ANSIBLE_CORE_VERSION.startswith("2.19.") and jinja2.__version__.startswith("3.1.")
                 and hasattr(_jinja_bits, "_TemplateCompileContext")
                 and hasattr(_engine.TemplateEngine, "_compile_template")
                 and hasattr(_engine.TemplateEngine, "_compile_expression"))
    # What compiled the code: an entry of another Python, Jinja or ansible-core is another key.
    TAG = (f"{sys.implementation.cache_tag}-{importlib.util.MAGIC_NUMBER.hex()}-jinja{jinja2.__version__}"
           f"-ansible{ANSIBLE_CORE_VERSION}-entry{ENTRY_FORMAT}")
except ImportError:  # pragma: no cover - depends on the installed ansible-core and Jinja
    SUPPORTED = False
    TAG = ""

# Overrides the disk folder; empty: keep code in memory only.
DIR_VARIABLE = "MLOPS_VAST_TEMPLATE_CACHE"
# Bounded: a play that templates generated strings (a loop building templates) must not grow a process or the folder.
MAX_ENTRIES = 4096
MAX_FILES = 8192
MAX_FILE_BYTES = 1 << 20
# The collection's own playbooks and roles: what the disk may hold.
COLLECTION_ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHIPPED_FOLDERS = tuple(os.path.join(COLLECTION_ROOT, name) + os.sep for name in ("playbooks", "roles"))

# Every environment attribute Jinja's lexer, parser or code generator reads (an overlay may change any of them).
_SYNTAX = ("block_start_string", "block_end_string", "variable_start_string", "variable_end_string",
           "comment_start_string", "comment_end_string", "line_statement_prefix", "line_comment_prefix",
           "trim_blocks", "lstrip_blocks", "newline_sequence", "keep_trailing_newline", "optimized", "autoescape",
           "is_async", "sandboxed")


class Stats:
    """What this process's cache did (for the tests and the benchmarks)."""

    def __init__(self) -> None:
        self.hits = self.loaded = self.compiled = self.stored = 0


stats = Stats()
# The filters and tests a compiled code calls, each as (filter or test, name, the function's mark).
Calls = tuple[tuple[str, str, str], ...]
# key -> (what the code calls, the code)
_codes: dict[str, tuple[Calls, t.Any]] = {}
_folder: str | None = None
_folder_fd: int | None = None
# Set while Ansible compiles a template or conditional that came from the collection's playbooks or roles.
_shipped: contextvars.ContextVar[bool] = contextvars.ContextVar("mlops_vast_shipped_template", default=False)


def _name(value: t.Any) -> str:
    return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__qualname__)}"


def _key(env: t.Any, kind: str, source: str, *extra: t.Any) -> str | None:
    """Everything the compiled code depends on but the filters' and tests' marks, as text (also the disk's file
    name, hashed); None: do not cache."""
    if env._debuggable_template_source or callable(env.autoescape):
        return None
    escaping = _jinja_bits._TemplateCompileContext.current(optional=True)
    return repr((kind, TAG, _name(type(env)), _name(env.code_generator_class), _name(env.finalize),
                 sorted(env.extensions), [getattr(env, name) for name in _SYNTAX],
                 bool(escaping and escaping.escape_backslashes), _jinja_bits._TemplateConfig.allow_embedded_templates,
                 str(source), *extra))


def _mark(mapping: t.Any, name: str) -> str:
    # As Jinja's code generator reads it: the function's pass_context/pass_environment mark, or none found.
    try:
        function = mapping.get(name)
    except Exception:  # a plugin that fails to load: never the same as one that loads
        return "unloadable"
    return "missing" if function is None else str(_PassArg.from_obj(function))


def _plugins(env: t.Any, kind: str) -> t.Any:
    return env.filters if kind == "filter" else env.tests


def _calls(env: t.Any, tree: t.Any) -> Calls:
    """The filters and tests the compiled code calls, each with its mark as this environment resolves it now."""
    found = []
    for node_type, kind in ((nodes.Filter, "filter"), (nodes.Test, "test")):
        for name in sorted({node.name for node in tree.find_all(node_type)}):
            found.append((kind, name, _mark(_plugins(env, kind), name)))
    return tuple(found)


def _calls_hold(env: t.Any, calls: Calls) -> bool:
    return all(_mark(_plugins(env, kind), name) == mark for kind, name, mark in calls)


def _file_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _load(key: str) -> tuple[Calls, t.Any] | None:
    if _folder_fd is None or not _shipped.get():
        return None
    try:
        fd = os.open(_file_name(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=_folder_fd)
    except OSError:  # absent (or a link): compiled instead
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not _private(info, stat.S_ISREG) or info.st_size > MAX_FILE_BYTES:
                return None
            raw = handle.read(MAX_FILE_BYTES + 1)
        digest, payload = raw[:32], raw[32:]
        if hashlib.sha256(payload).digest() != digest:  # cut short, damaged: compiled instead
            return None
        stored_key, calls, code = marshal.loads(payload)
        if stored_key != key or not isinstance(code, types.CodeType):
            return None
        calls = tuple((str(kind), str(name), str(mark)) for kind, name, mark in calls)
    except Exception:  # whatever a damaged or foreign file raises, the template is compiled instead
        return None
    return calls, code


def _store(key: str, calls: Calls, code: t.Any) -> None:
    if _folder_fd is None or not _shipped.get():
        return
    name, temporary = _file_name(key), f".tmp-{os.getpid()}-{secrets.token_hex(6)}"
    created = False
    try:
        payload = marshal.dumps((key, calls, code))
        if len(payload) + 32 > MAX_FILE_BYTES:  # never loaded: not written
            return
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=_folder_fd)
        created = True
        with os.fdopen(fd, "wb") as handle:
            handle.write(hashlib.sha256(payload).digest() + payload)
        # A reader sees the whole file or none (trials write the same one at once).
        os.replace(temporary, name, src_dir_fd=_folder_fd, dst_dir_fd=_folder_fd)
        stats.stored += 1
    except Exception:  # a full disk or a vanished folder: the code stays in memory only
        if created:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=_folder_fd)


def _remember(env: t.Any, key: str | None, compile_it: t.Callable[[], tuple[Calls, t.Any]]
              ) -> t.Any:
    if key is None:
        return compile_it()[1]
    kept = _codes.get(key)
    if kept is not None and _calls_hold(env, kept[0]):
        stats.hits += 1
        return kept[1]
    kept = _load(key)
    compiled = kept is None or not _calls_hold(env, kept[0])
    if compiled:
        kept = compile_it()  # a syntax error raises here, and nothing is kept
        stats.compiled += 1
    else:
        stats.loaded += 1
    if len(_codes) >= MAX_ENTRIES:
        _codes.clear()
    _codes[key] = kept  # before the disk: whatever happens there, this process keeps it
    if compiled:
        _store(key, *kept)
    return kept[1]


def _cached_compile(original: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    @functools.wraps(original)
    def compile(self, source, name=None, filename=None, raw=False, defer_init=False):
        key = _key(self, "template", source, name, filename, defer_init) if isinstance(source, str) and not raw \
            else None
        if key is None:
            return original(self, source, name, filename, raw, defer_init)

        def compile_it() -> tuple[Calls, t.Any]:
            code = original(self, source, name, filename, raw, defer_init)  # Jinja's own errors, as they were
            return _calls(self, self._parse(source, name, filename)), code

        return _remember(self, key, compile_it)

    return compile


def _cached_compile_expression(original: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    @functools.wraps(original)
    def compile_expression(self, source, undefined_to_none=True):
        key = _key(self, "expression", source)
        if key is None:
            return original(self, source, undefined_to_none)

        def compile_it() -> tuple[Calls, t.Any]:
            # Jinja's own compile_expression (3.1), up to the code object, which Jinja does not keep.
            parser = Parser(self, source, state="variable")
            try:
                expr = parser.parse_expression()
                if not parser.stream.eos:
                    raise TemplateSyntaxError("chunk after expression", parser.stream.current.lineno, None, None)
                expr.set_environment(self)
            except TemplateSyntaxError:
                self.handle_exception(source=source)
            tree = nodes.Template([nodes.Assign(nodes.Name("result", "store"), expr, lineno=1)], lineno=1)
            return _calls(self, tree), self.compile(tree)

        code = _remember(self, key, compile_it)
        return TemplateExpression(self.template_class.from_code(self, code, self.make_globals(None), None),
                                  undefined_to_none)

    return compile_expression


def _noting_origin(original: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    # The engine still holds the source as Ansible tagged it (where it came from); Jinja's compile no longer does.
    @functools.wraps(original)
    def compile_noting_origin(self, source, options):
        origin = Origin.get_tag(source) if _folder_fd is not None else None
        token = _shipped.set(bool(origin and origin.path and _is_shipped(origin.path)))
        try:
            return original(self, source, options)
        finally:
            _shipped.reset(token)

    return compile_noting_origin


@functools.lru_cache(maxsize=1024)
def _is_shipped(path: str) -> bool:
    # The collection's playbooks and roles, not the inventory variables Ansible reads beside them.
    real = os.path.realpath(path)
    return real.startswith(SHIPPED_FOLDERS) and not {"group_vars", "host_vars"} & set(real.split(os.sep))


def default_folder() -> str:
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG rule: a relative one is ignored
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mlops-vast", "templates", TAG)


def _private(info: os.stat_result, is_type: t.Callable[[int], bool]) -> bool:
    return (is_type(info.st_mode) and info.st_uid == os.geteuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _ancestors_safe(path: str) -> bool:
    # Whoever may replace a folder on the way may replace the cache under it: each must be this user's or root's,
    # writable by nobody else (its group only when that is this user's own group, as under umask 002's user
    # private groups), or sticky (as /tmp), where nobody may move what others own.
    while True:
        info = os.stat(path)
        others_write = info.st_mode & stat.S_IWOTH or (info.st_mode & stat.S_IWGRP and info.st_gid != os.getegid())
        if info.st_uid not in (0, os.geteuid()) or (others_write and not info.st_mode & stat.S_ISVTX):
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def private_folder(path: str) -> int | None:
    """An open descriptor of ``path``, or None unless it is a folder of this user's that nobody else may write to,
    under folders nobody else may change (what it holds is loaded as code). Missing folders are made, each 0700
    whatever the umask, and only under such a folder: never in another user's home, for example."""
    path = os.path.abspath(path)
    missing = []
    existing = path
    while not os.path.lexists(existing):
        missing.append(existing)
        existing = os.path.dirname(existing)
    try:
        if not _ancestors_safe(os.path.realpath(existing if missing else os.path.dirname(path))):
            return None
        for folder in reversed(missing):
            os.mkdir(folder, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not _private(os.fstat(fd), stat.S_ISDIR):
            os.close(fd)
            return None
        names = os.listdir(fd)
        if len(names) > MAX_FILES:  # kept small: start over rather than track what is used
            for name in names:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=fd)
    except OSError:
        os.close(fd)
        return None
    return fd


@functools.cache
def install() -> bool:
    """Put the cache in front of Ansible's template compilation, for the rest of this process (and its workers);
    False where unsupported."""
    global _folder, _folder_fd
    if not SUPPORTED:
        return False
    wanted = os.environ.get(DIR_VARIABLE)
    if wanted != "":
        folder = default_folder() if wanted is None else os.path.expanduser(wanted)
        _folder_fd = private_folder(folder)
        _folder = folder if _folder_fd is not None else None
    env_class = _jinja_bits.AnsibleEnvironment
    env_class.compile = _cached_compile(env_class.compile)
    env_class.compile_expression = _cached_compile_expression(env_class.compile_expression)
    engine = _engine.TemplateEngine
    engine._compile_template = _noting_origin(engine._compile_template)
    engine._compile_expression = _noting_origin(engine._compile_expression)
    return True
