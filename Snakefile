# effdet: TAO's efficientdet_tf1 pipeline as a Snakemake DAG. Rules live in rules/*.smk;
# experiments in config/config.yaml (checked by rules/config.smk before any job runs).
# dvc.yaml is generated from this DAG: python scripts/make_dvc_yaml.py

configfile: "config/config.yaml"
envvars: "EFFDET_KEY"  # the model key: from the environment only, never a command line
report: "report/workflow.rst"

include: "rules/config.smk"
include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/prune.smk"
include: "rules/deploy.smk"
include: "rules/report.smk"

rule all:
    input:
        all_targets(),

onsuccess:
    print_final_message()
