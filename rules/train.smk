# Training and evaluation; the model key reaches the CLI through EFFDET_KEY, never the command line.


rule train:
    input:
        spec=lambda wildcards: EXPERIMENTS[wildcards.exp]["spec"],
        train="results/{exp}/tfrecords/train",
        val="results/{exp}/tfrecords/val",
    output:
        # The whole folder: a stale model is retrained from scratch, not resumed from its
        # old checkpoints (`effdet train` run by hand resumes).
        directory("results/{exp}/train"),
    log:
        "logs/{exp}/train.log",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=720,
    shell:
        "effdet train -e {input.spec} -d {output} --log_file {log}"


rule evaluate:
    input:
        spec=lambda wildcards: EXPERIMENTS[wildcards.exp]["spec"],
        model="results/{exp}/train",
        val="results/{exp}/tfrecords/val",
    output:
        "results/{exp}/eval/metrics.json",
    log:
        "logs/{exp}/evaluate.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "effdet evaluate -e {input.spec} -m {input.model}/model.tlt -o results/{wildcards.exp}/eval"
        " --log_file {log}"
