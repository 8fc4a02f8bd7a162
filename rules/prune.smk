# Prune the trained model, retrain the pruned one (TAO's retrain spec), evaluate it.


rule prune:
    input:
        model="results/{exp}/train",
    output:
        # effdet prune refuses a non-empty folder; Snakemake empties it before a rerun.
        report(directory("results/{exp}/prune"), patterns=["{name}_report.json"],
               caption="../report/prune.rst", category="{exp}", subcategory="3. pruning"),
    params:
        prune=exp_config("prune"),
        flags=prune_flags,
    log:
        "logs/{exp}/prune.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "effdet prune -m {input.model}/model.tlt -o {output} {params.flags}"
        " --log_file {log} 2>> {log}"


rule retrain:
    input:
        spec=retrain_spec,
        pruned="results/{exp}/prune",
        train="results/{exp}/tfrecords/train",
        val="results/{exp}/tfrecords/val",
        annotations=val_annotations,
    output:
        directory("results/{exp}/retrain"),
    log:
        "logs/{exp}/retrain.log",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=train_gpu,
        mpi="",  # as for train (rules/train.smk)
    shell:
        "{resources.mpi} effdet train -e {input.spec} -d {output} --log_file {log} 2>> {log}"


rule evaluate_retrain:
    input:
        spec=retrain_spec,
        model="results/{exp}/retrain",
        val="results/{exp}/tfrecords/val",
        annotations=val_annotations,
    output:
        report("results/{exp}/retrain_eval/metrics.json", caption="../report/metrics.rst",
               category="{exp}", subcategory="2. evaluation"),
    log:
        "logs/{exp}/evaluate_retrain.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "effdet evaluate -e {input.spec} -m {input.model}/model.tlt"
        " -o results/{wildcards.exp}/retrain_eval --log_file {log} 2>> {log}"
