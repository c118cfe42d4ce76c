# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compile each Jinja template and conditional of the collection once, not at every use in every process.

ansible-core 2.19 compiles a template's source to Python (Jinja's parse, code generation and ``compile``, ~0.8 ms
on a 2-core controller) every time it templates it: the same ``when`` or task argument is compiled again for every
task, host and loop item, ~650 compilations in one train.yml's controller process, and again in every worker, and
again in every trial of a sweep. What Jinja's compiler produces is a code object that depends only on the source
and on the syntax settings it reads; it is bound to an environment only when a template object is made from it
(``Template.from_code``), which stays as Jinja does it. So:

- every controller process keeps the code objects it compiled (bounded), and a worker inherits them as it forks;
- the code of templates written in the collection's own files (its playbooks and roles: what every run and every
  trial templates) is also kept on disk, in a private folder under the user's cache, so that the next process
  (the next trial) loads it (marshal, ~5 µs) instead of compiling it. Nothing from elsewhere (extra vars, a user's
  playbook, inventory) is written: the folder only ever holds text the collection ships.

Written against ansible-core 2.19's templating internals (and Jinja 3.1); on anything else :func:`install` does
nothing. Template debugging (which writes each compiled source to a file) bypasses it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import marshal
import os
import stat
import sys
import tempfile
import typing as t

try:
    import jinja2
    from ansible._internal._datatag._tags import Origin
    from ansible._internal._templating import _engine, _jinja_bits
    from ansible.release import __version__ as ANSIBLE_CORE_VERSION
    from jinja2 import nodes
    from jinja2.environment import TemplateExpression
    from jinja2.exceptions import TemplateSyntaxError
    from jinja2.parser import Parser

    SUPPORTED = (ANSIBLE_CORE_VERSION.startswith("2.19.") and jinja2.__version__.startswith("3.1.")
                 and hasattr(_jinja_bits, "_TemplateCompileContext")
                 and hasattr(_engine.TemplateEngine, "_compile_template")
                 and hasattr(_engine.TemplateEngine, "_compile_expression"))
except ImportError:  # pragma: no cover - depends on the installed ansible-core and Jinja
    SUPPORTED = False

# Overrides the disk folder; empty: keep code in memory only.
DIR_VARIABLE = "MLOPS_VAST_TEMPLATE_CACHE"
# Bounded: a play that templates generated strings (a loop building templates) must not grow a process or the folder.
MAX_ENTRIES = 4096
MAX_FILES = 8192
# The collection's own files: what the disk may hold.
COLLECTION_ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", "..")) + os.sep

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
_codes: dict[str, t.Any] = {}
_folder: str | None = None
# Set while Ansible compiles a template or conditional that came from one of the collection's files.
_shipped: contextvars.ContextVar[bool] = contextvars.ContextVar("mlops_vast_shipped_template", default=False)


def _name(value: t.Any) -> str:
    return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__qualname__)}"


@functools.cache
def _plugins_fingerprint() -> str:
    # Jinja compiles a filter's or test's call after the function's pass_context/pass_environment marks: code kept
    # on disk is for these plugin files (ansible-core's own are in the folder's name, by version).
    found = []
    for kind in ("filter", "test"):
        with contextlib.suppress(OSError), os.scandir(os.path.join(COLLECTION_ROOT, "plugins", kind)) as entries:
            found += [(entry.name, entry.stat().st_size, entry.stat().st_mtime_ns) for entry in entries
                      if entry.name.endswith(".py")]
    return hashlib.sha256(repr(sorted(found)).encode()).hexdigest()[:16]


def _key(env: t.Any, kind: str, source: str, *extra: t.Any) -> str | None:
    """Everything the compiled code depends on, as text (also the disk's file name, hashed); None: do not cache."""
    if env._debuggable_template_source or callable(env.autoescape):
        return None
    escaping = _jinja_bits._TemplateCompileContext.current(optional=True)
    return repr((kind, _plugins_fingerprint(), _name(type(env)), _name(env.code_generator_class), _name(env.finalize),
                 sorted(env.extensions), [getattr(env, name) for name in _SYNTAX],
                 bool(escaping and escaping.escape_backslashes), _jinja_bits._TemplateConfig.allow_embedded_templates,
                 str(source), *extra))


def _path(key: str) -> str | None:
    return os.path.join(_folder, hashlib.sha256(key.encode()).hexdigest()) if _folder else None


def _load(key: str) -> t.Any:
    path = _path(key)
    if not path or not _shipped.get():
        return None
    try:
        with open(path, "rb") as handle:
            stored_key, code = marshal.load(handle)
    except (OSError, EOFError, ValueError, TypeError):  # absent, being replaced, damaged: compiled instead
        return None
    return code if stored_key == key else None


def _store(key: str, code: t.Any) -> None:
    path = _path(key)
    if not path or not _shipped.get():
        return
    try:
        fd, temporary = tempfile.mkstemp(dir=_folder, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            marshal.dump((key, code), handle)
        os.replace(temporary, path)  # a reader sees the whole file or none (trials write the same one at once)
        stats.stored += 1
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _remember(key: str | None, compile_it: t.Callable[[], t.Any]) -> t.Any:
    if key is None:
        return compile_it()
    code = _codes.get(key)
    if code is not None:
        stats.hits += 1
        return code
    code = _load(key)
    if code is not None:
        stats.loaded += 1
    else:
        code = compile_it()  # a syntax error raises here, and nothing is kept
        stats.compiled += 1
        _store(key, code)
    if len(_codes) >= MAX_ENTRIES:
        _codes.clear()
    _codes[key] = code
    return code


def _cached_compile(original: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    @functools.wraps(original)
    def compile(self, source, name=None, filename=None, raw=False, defer_init=False):
        key = _key(self, "template", source, name, filename, defer_init) if isinstance(source, str) and not raw \
            else None
        return _remember(key, lambda: original(self, source, name, filename, raw, defer_init))

    return compile


def _cached_compile_expression(original: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    @functools.wraps(original)
    def compile_expression(self, source, undefined_to_none=True):
        key = _key(self, "expression", source)
        if key is None:
            return original(self, source, undefined_to_none)

        def compile_it() -> t.Any:
            # Jinja's own compile_expression (3.1), up to the code object, which Jinja does not keep.
            parser = Parser(self, source, state="variable")
            try:
                expr = parser.parse_expression()
                if not parser.stream.eos:
                    raise TemplateSyntaxError("chunk after expression", parser.stream.current.lineno, None, None)
                expr.set_environment(self)
            except TemplateSyntaxError:
                self.handle_exception(source=source)
            return self.compile(nodes.Template([nodes.Assign(nodes.Name("result", "store"), expr, lineno=1)],
                                               lineno=1))

        code = _remember(key, compile_it)
        return TemplateExpression(self.template_class.from_code(self, code, self.make_globals(None), None),
                                  undefined_to_none)

    return compile_expression


def _noting_origin(original: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    # The engine still holds the source as Ansible tagged it (where it came from); Jinja's compile no longer does.
    @functools.wraps(original)
    def compile_noting_origin(self, source, options):
        origin = Origin.get_tag(source)
        token = _shipped.set(bool(origin and origin.path
                                  and os.path.realpath(origin.path).startswith(COLLECTION_ROOT)))
        try:
            return original(self, source, options)
        finally:
            _shipped.reset(token)

    return compile_noting_origin


def default_folder() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = f"{sys.implementation.cache_tag}-jinja{jinja2.__version__}-ansible{ANSIBLE_CORE_VERSION}"
    return os.path.join(base, "mlops-vast", "templates", tag)


def private_folder(path: str) -> str | None:
    """``path``, made if missing; None unless it is a folder of this user's that nobody else may write to (what it
    holds is loaded as code)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    with contextlib.suppress(OSError):
        with os.scandir(path) as entries:
            names = [entry.path for entry in entries]
        if len(names) > MAX_FILES:  # kept small: start over rather than track what is used
            for name in names:
                with contextlib.suppress(OSError):
                    os.unlink(name)
    return path


@functools.cache
def install() -> bool:
    """Put the cache in front of Ansible's template compilation, once per process; False where unsupported."""
    global _folder
    if not SUPPORTED:
        return False
    wanted = os.environ.get(DIR_VARIABLE)
    _folder = private_folder(default_folder() if wanted is None else wanted) if wanted != "" else None
    env_class = _jinja_bits.AnsibleEnvironment
    env_class.compile = _cached_compile(env_class.compile)
    env_class.compile_expression = _cached_compile_expression(env_class.compile_expression)
    engine = _engine.TemplateEngine
    engine._compile_template = _noting_origin(engine._compile_template)
    engine._compile_expression = _noting_origin(engine._compile_expression)
    return True
