"""Config building blocks shared by every `configs/<data>.py`.

A config file's `get_config(arg)` receives the text after the colon of
`--config=configs/fashion_mnist.py:recover,runlocal,ipc=10`: the first bare word is the stage, other
bare words are switches set to True, `key=value` sets an option. Unknown options are an error.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses

import ml_collections

STAGES = ("squeeze", "recover", "relabel", "validate", "all")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parse `stage,flag,key=value` into a ConfigDict of `defaults` (plus `stage`).

    Values are Python literals where they parse as one (`ipc=10`, `lr=0.1`), strings otherwise.
    """
    defaults = {"stage": "all", "runlocal": False, **defaults}
    parsed = dict(defaults)
    for token in filter(None, (t.strip() for t in (arg or "").split(","))):
        if "=" in token:
            key, value = token.split("=", 1)
            with contextlib.suppress(ValueError, SyntaxError):  # not a literal: keep the string
                value = ast.literal_eval(value)
        elif token in STAGES:
            key, value = "stage", token
        else:
            key, value = token, True
        if key not in defaults:
            raise ValueError(f"unknown config option {key!r} in {arg!r}; known: {sorted(defaults)}"
                             f" and stages {STAGES}")
        parsed[key] = value
    if parsed["stage"] not in STAGES:
        raise ValueError(f"unknown stage {parsed['stage']!r}; expected one of {STAGES}")
    return ml_collections.ConfigDict(parsed)


def base_config() -> ml_collections.ConfigDict:
    """Every option with its SRe²L default; data-set configs override what differs."""
    c = ml_collections.ConfigDict()
    c.stage = "all"
    c.seed = 0
    c.runlocal = False
    c.log_every_steps = 50
    c.num_devices = 0  # use the first N devices (0: all); results do not depend on it
    # JAX devices the host CPU is split into (no effect on GPU/TPU runs; 0: JAX's one). Two train
    # the narrow CPU models 1.1-1.4× faster (parallel.use_cpu_devices); the count changes float
    # rounding in data-parallel steps, so it is fixed here rather than taken from the machine.
    c.cpu_devices = 2

    c.data = d = ml_collections.ConfigDict()
    d.name = ""
    d.source = "idx"  # idx | imagefolder | tfds
    d.dir = ""  # IDX directory, ImageFolder root, or TFDS data_dir ("" = TFDS default)
    d.tfds_name = ""
    d.tfds_download = False  # only for users with a network
    d.train_split = "train"
    d.eval_split = "test"
    d.num_classes = 0
    d.class_ids = ml_collections.FieldReference(None, field_type=tuple)  # subset, in this order
    d.image_size = 32  # model input resolution
    d.channels = 3
    # Sources whose images have the other channel count: replicate gray to RGB (RGB-pretrained
    # teachers on gray data), or take one channel of RGB images whose channels are equal.
    d.convert_channels = False
    d.mean = (0.485, 0.456, 0.406)
    d.std = (0.229, 0.224, 0.225)
    d.eval_resize = 0  # resize shorter side to this, then center-crop image_size (0: resize to size)
    d.train_augment = "rrc_flip"  # none | flip | crop_flip | rrc_flip
    d.crop_padding = 4
    # Train images held out of everything (squeeze, recovery, baselines) for choosing recipes:
    # class-balanced, drawn from holdout_seed; every model reports its accuracy on them.
    d.holdout = 0
    d.holdout_seed = 0  # also draws data.val_fraction
    # A tree without an evaluation split: this fraction of each class's train images evaluates
    # (and is out of training), drawn from holdout_seed.
    d.val_fraction = 0.0
    d.max_train_examples = 0  # 0 = all; runlocal uses a slice
    d.max_eval_examples = 0

    c.model = m = ml_collections.ConfigDict()
    m.arch = "resnet18"
    m.width = 64
    m.stem = "imagenet"  # imagenet | lowres
    m.dtype = "float32"

    c.squeeze = s = ml_collections.ConfigDict()
    s.torchvision_weights = ""  # a .pth to import instead of training
    s.epochs = 50
    s.batch_size = 256
    s.optimizer = "sgd"  # sgd | adamw
    s.lr = 0.2
    s.momentum = 0.9
    s.weight_decay = 1e-4
    s.warmup_epochs = 5
    s.schedule = "cosine_epoch"  # cosine_epoch (the authors' scripts) | cosine_step
    s.label_smoothing = 0.0
    s.eval_every_epochs = 1
    s.checkpoint_every_steps = 200
    s.max_steps = 0  # 0 = epochs * steps_per_epoch; for smoke runs
    # More teachers, trained after the main one with this recipe ("arch:width:epochs" each, seed
    # + 1 + i, in squeeze/backbones/<i>/): recovery cycles through all of them and soft labels
    # are their ensemble (EDC's briefly trained backbones, G-VBSM's several models).
    s.backbones = ()

    c.recover = r = ml_collections.ConfigDict()
    r.method = "sre2l"  # sre2l: optimize from noise/real starts | rded: select real patches (RDED)
    r.teacher = ""  # model checkpoint dir; "" = <workdir>/squeeze/model
    r.ipc = 50
    r.ipc_start = 0
    r.ipc_end = -1  # -1 = ipc
    r.class_start = 0
    r.class_end = -1  # -1 = num_classes
    r.batch_size = 100
    r.composition = "sequential"  # sequential (the published code) | classwise
    r.classwise_classes = 2  # classwise: classes per batch, batch_size/classwise_classes images each
    r.iterations = 4000
    r.lr = 0.25
    r.adam_b1 = 0.5
    r.adam_b2 = 0.9
    r.adam_eps = 1e-8
    r.alpha_bn = 0.01
    r.first_bn_multiplier = 10.0
    # EDC's soft category-aware matching: each BN term is (1 − α)·SRe²L's + α·the distance to the
    # class-conditional statistics of the real train data (averaged over the batch's labels).
    r.alpha_class = 0.0
    r.alpha_tv = 0.0
    r.alpha_l2 = 0.0
    r.crop = True  # multi-crop optimization: one RandomResizedCrop per iteration, shared by the batch
    r.crop_scale = (0.08, 1.0)
    # CDA (easy → hard): the crop's lower scale bound starts at 1.0 and reaches crop_scale[0] after
    # crop_milestone × iterations; constant keeps SRe²L's fixed crop_scale.
    r.crop_schedule = "constant"  # constant | linear | cosine | step
    r.crop_milestone = 1.0
    r.flip = True
    r.jitter = (0, 32)  # roll offsets uniform in [lo, hi] (inclusive), per axis
    r.image_format = "png"  # png (lossless) | jpeg (the original code's output)
    r.jpeg_quality = 75  # PIL's default, what the original code gets
    r.save_float = False  # also keep each last iterate as float32 <ipc>.npy (normalized space)
    r.checkpoint_every = 500
    r.batches_per_device = 1
    # Start images (SRe²L++/DWA, CV-DD, RDED): noise (SRe²L) | real_random | real_medium (the
    # teacher's medium-confidence images of the slot's class) | real_mosaic (2×2 of real crops) |
    # rded (RDED's selected images, `rded_*` below; EDC's Tiny-ImageNet/ImageNet start).
    r.init = "noise"
    r.init_pool = 200  # real_medium / real_mosaic: candidates per class the teacher scores
    # G-VBSM-style: recovery cycles through [teacher, *extra_teachers], one per iteration; relabel and
    # validate then take soft labels from the ensemble (mean logits) of the same models.
    r.extra_teachers = ()
    r.verifier = ""  # optional second model checkpoint that reports accuracy on the results
    # RDED (recover.method=rded): per class, rded_pool real images × rded_crops square crops
    # (RandomResizedCrop scale rded_crop_scale), scored by the teacher's (or the ensemble's) loss;
    # rded_factor f stitches f×f selected patches into one image (1 at ≤ 64², 2 at ImageNet size).
    r.rded_pool = 300
    r.rded_crops = 5
    r.rded_crop_scale = (0.08, 1.0)
    r.rded_factor = 1
    r.rded_scorer = "teacher"  # teacher | ensemble (teacher + extra teachers, mean logits)
    # What the scoring model sees of a crop when f > 1: padded (RDED: the size // f patch
    # zero-padded to size) | decoded (the patch resized back to size: what a student with
    # student.multi_formation = f trains on).
    r.rded_score_view = "padded"
    # rded_bits b < 8 packs 8 / b selected images at b bits into each stored image (what a student
    # with student.bit_depth = b reads); crops are scored quantized, as the student will see them.
    r.rded_bits = 8
    # loss: the lowest-loss images (RDED) | cluster: the lowest-loss image of each of ipc·f² k-means
    # clusters of the scoring model's penultimate features (diversity across the class's modes) |
    # medoid: each cluster's image nearest its mean | median: the images around the median loss.
    r.rded_select = "loss"
    # The teacher's convolutions during recovery: float32 | bfloat16 (BN statistics, the loss and the
    # images stay float32). bf16 halves the arithmetic on TPU/GPU; on CPU it is no faster.
    r.compute_dtype = "float32"

    c.student = st = ml_collections.ConfigDict()  # the student recipe: relabel and validate
    st.arch = "resnet18"
    st.width = 64
    st.epochs = 300
    st.batch_size = 1024
    st.optimizer = "adamw"  # adamw | sgd
    st.lr = 1e-3
    st.momentum = 0.9
    st.weight_decay = 0.01
    st.schedule = "cosine_epoch"  # cosine_epoch | cosine_step | smooth_cosine | multistep
    st.warmup_epochs = 0
    st.zeta = 2.0  # smooth_cosine: 0.5·(1+cos(π·epoch/(ζ·epochs))); ζ = 2 ends at half the lr
    st.milestones = (0.8, 0.9, 0.95)  # multistep: fractions of the epochs where lr *= gamma
    st.gamma = 0.5
    st.loss = "kl"  # kl: KL(teacher/τ ‖ student/τ) | mse_ce: MSE to the teacher's logits + ce_weight·CE
    st.temperature = 20.0
    st.tau2_factor = False
    st.ce_weight = 0.025
    # Label smoothing ε of the hard-label students' cross-entropy (random+hard, synthetic+hard);
    # soft-label students never use it.
    st.hard_label_smoothing = 0.0
    # The hard-label students' RandomResizedCrop scale (crop "rrc"); () keeps crop_scale. A tiny
    # crop keeps its whole image's one-hot label, where a soft-label student gets the teacher's
    # label of the crop itself.
    st.hard_label_crop_scale = ()
    st.ema = 0.0  # EMA rate of the student's weights (0: off); evaluation then uses the EMA
    st.crop = "rrc"  # rrc: RandomResizedCrop(crop_scale) | pad_crop: RandomCrop(crop_padding) | none
    st.crop_scale = (0.08, 1.0)
    st.crop_padding = 4
    st.flip = True
    # RandAugment operations per image before the crop (0: off; EDC's student: torchvision's
    # RandAugment(), 2 operations at magnitude 9 of 31), sre2l_jax/randaugment.py.
    st.randaugment = 0
    st.randaugment_magnitude = 9
    # IDC's multi-formation (sre2l_jax/data/mosaics.py): f > 1 reads each stored image as f × f
    # cells, each resized to the full size, and gives the random real baselines the same format.
    st.multi_formation = 1
    # Bit planes (sre2l_jax/data/mosaics.py): b < 8 reads each stored image as 8 / b images at b
    # bits per pixel (same bytes, more images), and gives the random real baselines the same format.
    st.bit_depth = 8
    st.mix = "cutmix"  # none | cutmix | mixup
    st.mix_alpha = 1.0
    st.mix_prob = 1.0
    # Online soft labels round the teacher's logits through this dtype; "float16" gives exactly
    # what stored labels hold, so an online run can be compared with a stored-label run.
    st.teacher_logits_dtype = "float32"
    st.eval_every_epochs = 10
    st.data_workers = 0  # Grain worker processes decoding student images (0: a thread in-process)
    st.data_prefetch = 2  # batches read ahead; host memory holds these, not the set

    c.relabel = rl = ml_collections.ConfigDict()
    rl.images = ""  # ImageFolder of synthetic images; "" = <workdir>/recover/images
    rl.top_k = 0  # store only the k largest logits per image (0 = all)

    c.validate = v = ml_collections.ConfigDict()
    v.labels = "online"  # online | stored
    v.seeds = (0,)
    v.baselines = ("real_soft", "real_hard", "synthetic_hard")
    v.checkpoint_every_epochs = 50
    # DD-Ranking's full-data hard-label accuracy: "teacher" uses the teacher's when the student
    # has its architecture and width (the teacher is that model); "none" leaves HLR/LRS out.
    v.full_data = "teacher"
    return c


# Keys that moved into the `student` section (read by relabel and validate alike).
MOVED_KEYS = {
    **{f"relabel.{k}": f"student.{k}" for k in ("epochs", "batch_size", "temperature", "crop_scale",
                                                 "mix", "mix_alpha", "mix_prob")},
    **{f"validate.{k}": f"student.{k}" for k in (
        "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule",
        "warmup_epochs", "tau2_factor", "teacher_logits_dtype", "eval_every_epochs")},
    "validate.student_arch": "student.arch", "validate.student_width": "student.width",
}
# Keys that change how a stage runs, never what it produces: no stage's settings include them,
# so changing one neither reruns a finished stage nor refuses to resume a partial one.
EXECUTION_KEYS = frozenset({
    "stage", "runlocal", "log_every_steps", "num_devices", "cpu_devices", "squeeze.checkpoint_every_steps",
    "student.data_workers", "student.data_prefetch",
    "recover.ipc_start", "recover.ipc_end", "recover.class_start", "recover.class_end",
    "recover.checkpoint_every", "recover.batches_per_device", "validate.checkpoint_every_epochs",
})


def moved_key_error(key: str) -> str | None:
    """The message for a key that moved (`relabel.temperature`), or None."""
    new = MOVED_KEYS.get(key)
    return None if new is None else f"config key {key} moved to {new}; set --config.{new} instead"


def check_overrides(argv: list[str]) -> None:
    """Refuse `--config.<moved key>=...` with the new key's name (ml_collections would only say
    that the key does not exist)."""
    for arg in argv:
        if arg.startswith("--config."):
            message = moved_key_error(arg[len("--config."):].split("=", 1)[0])
            if message:
                raise ValueError(message)


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Lock so that a misspelt `--config.x=...` override raises instead of adding a key.

    A config file that still sets a moved key (`c.relabel.temperature = 4`) added it silently
    before the lock; that is an error naming the new key.
    """
    for key in MOVED_KEYS:
        section, name = key.split(".")
        if name in config.get(section, {}):
            raise ValueError(moved_key_error(key))
    config.lock()
    return config


def hparams(cls, *sections, **fixed):
    """A dataclass `cls` filled field by field from the first config section holding that name.

    `fixed` gives fields that come from elsewhere; a field found nowhere keeps its default, and a
    field without default that is found nowhere is an error.
    """
    values = dict(fixed)
    for field in dataclasses.fields(cls):
        if field.name in values:
            continue
        for section in sections:
            if field.name in section:
                value = section[field.name]
                values[field.name] = tuple(value) if isinstance(value, list | tuple) else value
                break
    return cls(**values)


def shrink_for_runlocal(c: ml_collections.ConfigDict) -> None:
    """Shrink any config to a smoke run of the whole code path (< 2 minutes on 2 CPU cores)."""
    c.runlocal = True
    c.log_every_steps = 5
    c.data.max_train_examples = 2048
    c.data.max_eval_examples = 512
    c.data.image_size = min(c.data.image_size, 32)
    c.data.eval_resize = 0
    c.model.width = 8
    c.squeeze.epochs = 1
    c.squeeze.batch_size = 128
    c.squeeze.warmup_epochs = 0
    c.squeeze.checkpoint_every_steps = 8
    c.recover.ipc = min(c.recover.ipc, 2)
    c.recover.batch_size = min(c.recover.batch_size, 20)
    c.recover.iterations = 20
    c.recover.checkpoint_every = 10
    c.student.epochs = 10
    c.student.batch_size = 20
    c.student.width = 8
    c.student.eval_every_epochs = 5
    c.validate.seeds = (0,)
