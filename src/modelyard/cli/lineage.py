"""``yard lineage show OBJECT``: the upstream and downstream tree of a dataset version, run or artifact."""

from __future__ import annotations

import re
from typing import Any

import typer
from rich.text import Text
from rich.tree import Tree

from modelyard.cli._app import acting, app, print_json, print_whole

lineage_app = typer.Typer(
    help="Lineage: what an object was made from and what was made from it.", no_args_is_help=True
)
app.add_typer(lineage_app, name="lineage")


def _as_dict(node: Any) -> dict[str, Any]:
    return {
        "ref": node.ref,
        "relation": node.relation,
        "truncated": node.truncated,
        "children": [_as_dict(c) for c in node.children],
    }


def _rich(tree: Tree, node: Any) -> None:
    for child in node.children:
        label = Text(child.ref)
        if child.relation:
            label.append(f"  ({child.relation})", style="dim")
        if child.truncated:
            label.append("  …", style="dim")
        _rich(tree.add(label), child)


@lineage_app.command("show")
def show(
    ref: str = typer.Argument(
        ...,
        help="dataset:name@3, name@3, run:<id>, a run id (or prefix of 6+), model:name@3, artifact:<sha256>.",
    ),
    depth: int = typer.Option(10, min=1, max=50, help="How many hops to follow each way."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Print what OBJECT was made from (upstream) and what was made from it (downstream)."""
    from modelyard.tracking._lineage import lineage
    from modelyard.tracking._store import resolve_run_id

    with acting() as (platform, ctx):
        # A run as every other command takes it: the 12 characters `yard runs ls` shows, or any unique
        # prefix of 6+, bare or as run:PREFIX (the lineage store keys runs by their full id).
        prefix = re.fullmatch(r"(?:run:)?([0-9a-f]{6,31})", ref)
        if prefix is not None:
            ref = f"run:{resolve_run_id(platform, ctx, prefix[1])}"
        up, down = lineage(platform, ctx, ref, depth=depth)
    if json_out:
        print_json(
            {"ref": up.ref, "upstream": _as_dict(up)["children"], "downstream": _as_dict(down)["children"]}
        )
        return
    root = Tree(Text(up.ref, style="bold"))
    up_tree = root.add(Text("upstream", style="cyan"))
    _rich(up_tree, up)
    if not up.children:
        up_tree.add(Text("(nothing recorded)", style="dim"))
    down_tree = root.add(Text("downstream", style="cyan"))
    _rich(down_tree, down)
    if not down.children:
        down_tree.add(Text("(nothing recorded)", style="dim"))
    print_whole(root)
