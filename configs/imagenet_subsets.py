r"""10- and 100-class ImageNet subsets of SRe²L's Table 1, as class-id lists over one ImageNet tree.

The ImageNet-1K data (ImageFolder or TFDS, see configs/imagenet.py) is read through `data.class_ids`;
nothing is copied. The squeezed model is trained on the subset (a 1000-way torchvision model does
not have the subset's BN statistics).
  python -m sre2l_jax.main \
      --config=configs/imagenet_subsets.py:all,subset=imagenette,data_dir=DATA --workdir=W
Subsets: imagenette, imagewoof (112²); MTT's imagefruit, imagemeow, imagesquawk, imageyellow (128²);
imagenet10 / imagenet100 (224²): IDC's class100.txt order, pass it as class_list=FILE (one wnid per
line; ImageNet-10 is its first 10 lines). MTT's code defines no "ImageBlub" list, so none is offered.
"""

from sre2l_jax import configlib, recipes

# ImageNet-1K class indices (torchvision order), as published with MTT (Cazenavette et al., 2022).
SUBSETS = {
    "imagenette": (0, 217, 482, 491, 497, 566, 569, 571, 574, 701),
    "imagewoof": (193, 182, 258, 162, 155, 167, 159, 273, 207, 229),
    "imagemeow": (281, 282, 283, 284, 285, 291, 292, 290, 289, 287),
    "imagesquawk": (84, 130, 88, 144, 145, 22, 96, 9, 100, 89),
    "imagefruit": (953, 954, 949, 950, 951, 957, 952, 945, 943, 948),
    "imageyellow": (309, 986, 954, 951, 987, 779, 599, 291, 72, 11),
}
RESOLUTION = {"imagenette": 112, "imagewoof": 112}


def _class_ids_from_file(path: str, count: int, data_dir: str) -> tuple[int, ...]:
    """wnids listed in `path` → indices in the sorted wnid order of DATA/train."""
    import os

    with open(path) as f:
        wnids = [line.strip() for line in f if line.strip()][:count]
    all_wnids = sorted(os.listdir(os.path.join(data_dir, "train")))
    missing = [w for w in wnids if w not in all_wnids]
    if missing:
        raise ValueError(f"class_list {path}: wnids not in {data_dir}/train: {missing[:5]}")
    return tuple(all_wnids.index(w) for w in wnids)


def get_config(arg: str | None = None):
    arg = configlib.parse_arg(arg, subset="imagenette", ipc=10, data_dir="", class_list="", tfds=False)
    c = configlib.base_config()
    c.stage, c.runlocal = arg.stage, arg.runlocal
    recipes.imagenet_recipe(c)
    if arg.subset in SUBSETS:
        ids = SUBSETS[arg.subset]
        size = RESOLUTION.get(arg.subset, 128)
    elif arg.subset in ("imagenet10", "imagenet100"):
        if not arg.class_list:
            raise ValueError(f"subset {arg.subset} needs class_list=FILE (IDC's class100.txt)")
        ids = _class_ids_from_file(arg.class_list, int(arg.subset[8:]), arg.data_dir)
        size = 224
    else:
        raise ValueError(f"unknown subset {arg.subset!r}; known: {sorted(SUBSETS)} + imagenet10/100")
    d = c.data
    d.name, d.dir, d.class_ids, d.num_classes = arg.subset, arg.data_dir, ids, len(ids)
    if arg.tfds:
        d.source, d.tfds_name, d.eval_split = "tfds", "imagenet2012", "validation"
    d.image_size, d.eval_resize = size, size * 8 // 7
    c.squeeze.epochs, c.squeeze.lr, c.squeeze.weight_decay, c.squeeze.warmup_epochs = 100, 0.1, 1e-4, 5
    c.recover.ipc = arg.ipc
    c.student.batch_size = 128
    if arg.runlocal:
        configlib.shrink_for_runlocal(c)
    return configlib.lock(c)
