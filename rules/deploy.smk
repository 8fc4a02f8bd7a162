# The retrained model → ONNX + .etlt (export) → engine → inference on a few validation
# images (sample_images).
# On CPU set-ups the engine is ONNX Runtime's optimised model (gen_ort_engine:
# engine/model.onnx); with `gpu_engine: true` it is a TensorRT engine (gen_trt_engine:
# engine/model.engine) built on a GPU.


rule export:
    input:
        spec=retrain_spec,
        model="results/{exp}/retrain",
        annotations=val_annotations,
    output:
        etlt="results/{exp}/export/model.etlt",
        onnx="results/{exp}/export/model.onnx",
        trt_onnx="results/{exp}/export/model.trt.onnx",
        labels="results/{exp}/export/labels.txt",
        nvinfer="results/{exp}/export/nvinfer_config.txt",
    params:
        export=exp_config("export"),
    log:
        "logs/{exp}/export.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "effdet export -m {input.model}/model.tlt -e {input.spec} -o {output.etlt}"
        " --data_type {params.export[data_type]} --max_batch_size {params.export[max_batch_size]}"
        " --force --log_file {log} 2>> {log}"


# Both engine rules write DeepStream's labels.txt and nvinfer_config.txt beside the engine,
# naming export's TensorRT graph (DeepStream builds its own engine from it when it cannot
# load ONNX Runtime's).
rule gen_ort_engine:
    input:
        model="results/{exp}/export/model.onnx",
        trt_onnx="results/{exp}/export/model.trt.onnx",
        calibration=calibration_images,
    output:
        engine="results/{exp}/engine/model.onnx",
        labels="results/{exp}/engine/labels.txt",
        nvinfer="results/{exp}/engine/nvinfer_config.txt",
    params:
        flags=ort_engine_flags,
        cleanup=cache_cleanup(ORT_CACHE),
    log:
        "logs/{exp}/gen_ort_engine.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "{params.cleanup}effdet gen_trt_engine -m {input.model} --engine_file {output.engine}"
        " {params.flags}"
        " --log_file {log} 2>> {log}"


rule gen_trt_engine:
    input:
        model="results/{exp}/export/model.trt.onnx",
        calibration=calibration_images,
    output:
        engine="results/{exp}/engine/model.engine",
        labels="results/{exp}/engine/labels.txt",
        nvinfer="results/{exp}/engine/nvinfer_config.txt",
    params:
        flags=engine_flags,
        cleanup=cache_cleanup(TRT_CACHE),
    log:
        "logs/{exp}/gen_trt_engine.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=1,
    shell:
        "{params.cleanup}effdet gen_trt_engine -m {input.model} --engine_file {output.engine}"
        " {params.flags}"
        " --log_file {log} 2>> {log}"


rule sample_images:
    input:
        images=raw_images,
        annotations=val_annotations,
    output:
        directory("results/{exp}/samples"),
    params:
        inference=exp_config("inference"),
    log:
        "logs/{exp}/sample_images.log",
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "python scripts/sample_images.py --images {input.images} --annotations {input.annotations}"
        " --num-images {params.inference[num_images]} --out {output} > {log} 2>&1"


rule inference:
    input:
        spec=retrain_spec,
        engine=lambda wildcards: engine_file(wildcards.exp),
        images="results/{exp}/samples",
    output:
        images=report(directory("results/{exp}/inference/images"),
                      patterns=["{name}.jpg", "{name}.png"], caption="../report/inference.rst",
                      category="{exp}",
                      subcategory="4. inference"),
        labels=directory("results/{exp}/inference/labels"),
    params:
        inference=exp_config("inference"),
        flags=inference_flags,
    log:
        "logs/{exp}/inference.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=engine_gpu,
    shell:
        "effdet inference -m {input.engine} -e {input.spec} -i {input.images}"
        " -o {output.images} -l {output.labels} {params.flags} --log_file {log} 2>> {log}"
