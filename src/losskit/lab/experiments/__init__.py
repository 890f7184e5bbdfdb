"""One module per experiment; each exposes ``run(ctx: LabContext) -> ExperimentResult``."""
