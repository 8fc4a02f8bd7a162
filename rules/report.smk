# Tables and curves for `snakemake --report`: the outputs flagged report() here and in the
# other rules (metrics.json of both evaluations, the prune report, annotated images).


rule report_assets:
    input:
        eval="results/{exp}/eval/metrics.json",
        retrain_eval="results/{exp}/retrain_eval/metrics.json",
        prune="results/{exp}/prune",
        train="results/{exp}/train",
        retrain="results/{exp}/retrain",
    output:
        summary=report("results/{exp}/report/summary.html", caption="../report/summary.rst",
                       category="{exp}", subcategory="1. summary"),
        curves=report("results/{exp}/report/training_curves.svg",
                      caption="../report/curves.rst", category="{exp}",
                      subcategory="1. summary"),
    log:
        "logs/{exp}/report_assets.log",
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "python scripts/report_assets.py --exp {wildcards.exp} --eval {input.eval}"
        " --retrain-eval {input.retrain_eval} --prune-report {input.prune}/prune_report.json"
        " --train-dir {input.train} --retrain-dir {input.retrain}"
        " --html {output.summary} --svg {output.curves} > {log} 2>&1"
