"""The matched-comparison protocol: member plan, smoke checks, member evaluation, results schema, decision,
statistics, scaling fits, report, plots and the stage table. The `compare` job in `jobs/` composes them."""
