# Raw data → TFRecord shards (effdet dataset_convert), one rule per step.


rule demo_data:
    output:
        images=directory("results/{exp}/raw/images"),
        train="results/{exp}/raw/annotations/train.json",
        val="results/{exp}/raw/annotations/val.json",
    params:
        dataset=exp_config("dataset"),
    log:
        "logs/{exp}/demo_data.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python scripts/make_demo_data.py --out results/{wildcards.exp}/raw"
        " --num-images {params.dataset[synthetic][num_images]}"
        " --size {params.dataset[synthetic][width]}x{params.dataset[synthetic][height]}"
        " --seed {params.dataset[synthetic][seed]}"
        " --val-fraction {params.dataset[synthetic][val_fraction]}"
        " > {log} 2>&1"


rule dataset_convert:
    input:
        images=raw_images,
        annotations=raw_annotations,
    output:
        directory("results/{exp}/tfrecords/{split}"),
    params:
        num_shards=exp_config("num_shards"),
    log:
        "logs/{exp}/dataset_convert_{split}.log",
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "effdet dataset_convert -i {input.images} -a {input.annotations} -o {output}"
        " -t {wildcards.split} -s {params.num_shards} --log_file {log} 2>> {log}"
