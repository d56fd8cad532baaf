"""One module per measurement; each adds rows to ``ctx.results`` and returns nothing."""
