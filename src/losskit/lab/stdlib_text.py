"""Docstrings of ~90 standard-library modules, printed as a JSON list (the lab's text corpus).

Run as a script by :func:`losskit.lab.data.stdlib_corpus` in a fresh interpreter without
site-packages and with ``PYTHONHASHSEED=0``: with nothing imported beforehand and a fixed string hash,
the modules' attributes (and so the text) depend on the Python build only. Standard library only.
"""

from __future__ import annotations

import importlib
import inspect
import json

_STDLIB_MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum",
    "fractions", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser",
    "http.client", "http.server", "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "locale",
    "logging", "lzma", "mailbox", "mimetypes", "numbers", "operator", "optparse", "os", "pathlib", "pickle",
    "pkgutil", "platform", "poplib", "pprint", "queue", "random", "re", "sched", "secrets", "selectors",
    "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics",
    "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
    "trace", "traceback", "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings",
    "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zoneinfo",
)  # fmt: skip


def docstrings() -> list[str]:
    """The docstrings of the modules above, their public classes and functions, and the classes' members."""
    docs: list[str] = []
    # id -> the object itself: keeping every visited object alive stops a freed temporary's id from
    # being reused by a later object, which would then be skipped (the text changed from run to run)
    seen: dict[int, object] = {}
    for name in _STDLIB_MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:  # a module missing from a trimmed Python build
            continue
        _collect_docs(mod, docs, seen, depth=0)
    return docs


def _collect_docs(obj: object, docs: list[str], seen: dict[int, object], depth: int) -> None:
    if id(obj) in seen:
        return
    seen[id(obj)] = obj
    doc = inspect.getdoc(obj)
    if doc:
        docs.append(doc)
    if depth >= 2:
        return
    mod_name = getattr(obj, "__name__", "") if inspect.ismodule(obj) else getattr(obj, "__module__", "")
    for attr in sorted(vars(obj)) if hasattr(obj, "__dict__") else []:
        if attr.startswith("_"):
            continue
        try:
            member = getattr(obj, attr)
        except Exception:
            continue
        if inspect.isclass(member) or inspect.isfunction(member) or inspect.isbuiltin(member):
            if getattr(member, "__module__", None) == mod_name or not inspect.ismodule(obj):
                _collect_docs(member, docs, seen, depth + 1)


if __name__ == "__main__":
    print(json.dumps(docstrings()))
