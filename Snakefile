# effdet: TAO's efficientdet_tf1 pipeline as a Snakemake DAG. Rules live in rules/*.smk;
# experiments in config/config.yaml (checked against config/config.schema.yaml).
from snakemake.utils import validate

configfile: "config/config.yaml"
envvars: "EFFDET_KEY"
validate(config, "config/config.schema.yaml")

include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"

rule all:
    input:
        all_targets(),
