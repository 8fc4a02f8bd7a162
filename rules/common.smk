# Helpers shared by the rules: which experiment is which, and what `all` builds.

EXPERIMENTS = config["experiments"]
SPLITS = ["train", "val"]

for _name in config["run"]:
    if _name not in EXPERIMENTS:
        raise ValueError(f"config/config.yaml: run lists '{_name}', which is not under experiments")

wildcard_constraints:
    exp="|".join(EXPERIMENTS),
    split="|".join(SPLITS),


def dataset_of(exp):
    return EXPERIMENTS[exp]["dataset"]


def raw_images(wildcards):
    dataset = dataset_of(wildcards.exp)
    if "coco" in dataset:
        return dataset["coco"]["image_dir"]
    return f"results/{wildcards.exp}/raw/images"


def raw_annotations(wildcards):
    dataset = dataset_of(wildcards.exp)
    if "coco" in dataset:
        return dataset["coco"][wildcards.split]
    return f"results/{wildcards.exp}/raw/annotations/{wildcards.split}.json"


def all_targets():
    return [f"results/{exp}/eval/metrics.json" for exp in config["run"]]
