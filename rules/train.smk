# Training and evaluation; the model key reaches the CLI through EFFDET_KEY, never the command line.
# Every effdet rule logs to logs/<exp>/<rule>.log: effdet's own log (--log_file) and, appended,
# whatever TensorFlow prints to stderr.


rule train:
    input:
        spec=spec,
        pretrained=pretrained,
        train="results/{exp}/tfrecords/train",
        val="results/{exp}/tfrecords/val",
        annotations=val_annotations,
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
        gpu=train_gpu,
        # Slurm multi-worker launch ("srun --ntasks-per-node=M", see profiles/slurm); empty:
        # one process, as everywhere else.
        mpi="",
    shell:
        "{resources.mpi} effdet train -e {input.spec} -d {output} --log_file {log} 2>> {log}"


rule evaluate:
    input:
        spec=spec,
        model="results/{exp}/train",
        val="results/{exp}/tfrecords/val",
        annotations=val_annotations,
    output:
        report("results/{exp}/eval/metrics.json", caption="../report/metrics.rst",
               category="{exp}", subcategory="2. evaluation"),
    log:
        "logs/{exp}/evaluate.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "effdet evaluate -e {input.spec} -m {input.model}/model.tlt -o results/{wildcards.exp}/eval"
        " --log_file {log} 2>> {log}"
