"""Reading a command's --help: each generated flag shows its help and its default (option_flags.py)."""

from __future__ import annotations

import dataclasses


def help_entries(text: str) -> dict[str, tuple[str, str]]:
    """--help output as {first flag: (invocation, help)}; argparse puts a long invocation's help on the next line."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("  -"):
            invocation, _, described = line.strip().partition("  ")
            current = entries[invocation.split()[0].rstrip(",")] = [invocation, described.strip()]
        elif line.startswith("   ") and current is not None:
            current[1] = f"{current[1]} {line.strip()}".strip()
        else:
            current = None
    return {flag: (invocation, described) for flag, (invocation, described) in entries.items()}


def assert_flags_document_their_fields(entries: dict[str, tuple[str, str]],
                                       fields: list[dataclasses.Field]) -> None:
    """Each field's flag ends its help with the field's own default (what None means, never "None"; or
    "(required)"), after real help of its own. Positional fields have no flag and are skipped."""
    for field in fields:
        if field.metadata.get("positional"):
            continue
        invocation, described = entries[field.metadata.get("flag") or "--" + field.name.replace("_", "-")]
        if field.default is dataclasses.MISSING:
            note = "(required)"
            assert described.endswith(note), invocation
        elif field.default is None:
            note = f"[default: {field.metadata['none_means']}]"
            assert described.endswith(note) and "None" not in described, invocation
        else:
            note = f"[default: {field.default}]"
            assert described.endswith(note), invocation
        assert len(described.removesuffix(note).strip()) > 10, invocation  # real help besides the default
