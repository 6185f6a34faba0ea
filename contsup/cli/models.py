"""``contsup models``: the model names ``contsup split`` accepts."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from contsup.cli.common import app, user_errors

__all__ = ["models"]


@app.command()
def models(
    pattern: Annotated[
        str, typer.Argument(help="a word the name contains, or a wildcard like 'resnet*'")
    ] = "*",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """List the model names `contsup split` accepts."""
    with user_errors():
        from contsup.models.lookup import list_model_names

        names = list_model_names(pattern)
    if as_json:
        print(json.dumps({"pattern": pattern, "models": names}))
    else:
        print("\n".join(names))
