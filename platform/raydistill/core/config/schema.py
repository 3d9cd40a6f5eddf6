"""The config tree's sections: one typed dataclass per stage. These dataclasses are the one home of
every default; ``configs/*.yaml`` are recipes that override some of them (``configs/digits.yaml`` is the
embedded demo, not the defaults)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(kw_only=True)
class RunSection:
    """Where results go and how to reach Ray."""

    name: str = "digits"
    seed: int = 0
    storage_path: str = "runs"  # artifacts + Ray results; shared storage on a multi-node cluster
    address: str = ""  # "" = RAY_ADDRESS or a new local runtime; "auto" or ray://... to attach
    use_gpu: bool = False  # use a GPU when set and one is present
    quiet: bool = False  # fewer progress lines
    verbose: bool = False  # Ray's, Serve's and MLflow's own INFO logs on the console too (--verbose)
    tracking: bool = True  # MLflow: params, per-epoch metrics, artifact sha256, the champion (raydistill.tracking)
    tracking_uri: str = ""  # "" = sqlite:///<storage_path>/mlflow.db; or a team server (http://host:5000)


@dataclass(kw_only=True)
class DataSection:
    """Which data set, where it lives, and how it is split."""

    name: str = "digits"
    root: str = ""  # folder with IDX/CIFAR files; "" = the data set's default place
    download: bool = False  # torchvision download for cifar10/100 and (fashion_)mnist
    val_fraction: float = 0.1
    test_fraction: float = 0.2  # used only by sets without an official test split
    train_limit: int = 0  # 0 = every training example; >0 = a seeded subset (fast runs)
    synthetic_samples: int = 600
    synthetic_classes: int = 4
    synthetic_shape: list[int] = field(default_factory=lambda: [1, 8, 8])


@dataclass(kw_only=True)
class ModelSpec:
    """A registry name plus keyword arguments for it."""

    name: str = "mlp"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class AugmentSpec:
    """Seeded augmentation applied on the worker to each training batch's tensors ``(B, C, H, W)``."""

    translate: int = 0  # random shift by up to +-k px, raw-zero fill: Hinton's jitter; = random crop with padding k
    hflip: bool = False  # random horizontal flip (refused for digit data sets: a flipped digit is another digit)
    cutout: int = 0  # erase a random k x k px square (DeVries & Taylor 2017, who fill with the mean; here raw zero)
    mixup: float = 0.0  # this fraction of inputs mixes in a partner: in the batch (classic), from the whole set (views)
    mixup_alpha: float = 1.0  # the mixtures' weight lam ~ Beta(mixup_alpha, mixup_alpha) (core.mixup)

    def active(self) -> bool:
        return self.translate > 0 or self.hflip or self.cutout > 0 or self.mixup > 0


@dataclass(kw_only=True)
class RecipeSection:
    """How a model is trained: the same keys (and defaults) for the teacher, the distilled student
    and the student-alone baseline, so the baseline always gets the distilled student's recipe."""

    epochs: int = 20
    batch_size: int = 128  # per worker
    lr: float = 1e-3  # peak learning rate (after warm-up)
    optimizer: str = "adam"  # adam | adamw | sgd
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0
    decay_norms_and_biases: bool = True  # false: no weight decay on biases and norm layers
    scheduler: str = "none"  # none | cosine | multistep (per epoch, after warm-up)
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which lr *= gamma
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear warm-up from lr/(warmup+1) to lr
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    workers: Any = "auto"  # "auto" (1 worker per GPU, else 1 multi-threaded worker per node) or an int
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always checkpoints)
    max_failures: int = 1


@dataclass(kw_only=True)
class TeacherSection(RecipeSection):
    """Training the teacher with Ray Train."""

    model: ModelSpec = field(
        default_factory=lambda: ModelSpec(name="mlp", args={"hidden": [1200, 1200], "dropout": 0.5})
    )
    seeds: list[int] = field(default_factory=list)  # several teachers in one call
    models: list[ModelSpec] = field(default_factory=list)  # several architectures; [] = [model]


@dataclass(kw_only=True)
class TeacherRef:
    """One teacher of an ensemble: an artifact path and its weight in the mixture."""

    artifact: str = ""
    weight: float = 1.0


@dataclass(kw_only=True)
class DistillSection(RecipeSection):
    """Distilling the student with Ray Train (``baseline`` trains the same student alone with this recipe)."""

    student: ModelSpec = field(default_factory=lambda: ModelSpec(name="mlp", args={"hidden": [32]}))
    teacher: str = ""  # teacher artifact dir; "" = the newest teacher under storage_path
    teachers: list[TeacherRef] = field(default_factory=list)  # ensemble; overrides `teacher`
    temperature: float = 4.0
    alpha: float = 0.1  # weight of the hard-label CE; 1 - alpha weighs T^2 * KL (see core.losses.kd_loss)
    method: str = "kd"  # the soft term (core.methods): kd | dkd | dist, each with +lskd (lskd = kd+lskd) | fitnet
    dkd_alpha: float = 1.0  # DKD: weight of the target-class term (TCKD)
    dkd_beta: float = 8.0  # DKD: weight of the non-target-class term (NCKD; mdistiller's CIFAR-100 value)
    dist_beta: float = 1.0  # DIST: weight of the inter-class relation (per example; the paper's value)
    dist_gamma: float = 1.0  # DIST: weight of the intra-class relation (per class across the batch)
    dkd_warmup_epochs: int = 0  # the soft term's weight rises linearly over these epochs (mdistiller: 20 of 240)
    hint_weight: float = 100.0  # fitnet: weight of the hint MSE (core.hints; mdistiller's CIFAR-100 value)
    hint_layer: str = "auto"  # fitnet: the teacher layer whose output is the hint; auto = its penultimate features
    guided_layer: str = "auto"  # fitnet: the student layer that learns the hint (through a connector)
    mode: str = "cached"  # cached | online
    soft_targets: str = "workers"  # cached: workers (each its share, once; a sweep: its driver) | ray_data (an actor pool)
    soft_target_actors: int = 1  # Ray Data actors computing teacher logits (soft_targets: ray_data)
    cached_views: int = 0  # cached mode with distill.augment: teacher logits on this many seeded views per example (core.views)
    cache_topk: int = 0  # logits kept per view: 0 = every class when C <= 100, else the top 10 (rest spread uniformly)
    cache_max_gb: float = 4.0  # refuse a view cache larger than this (its size is logged before it is built)
    crash_at_epoch: int = -1  # fault injection: one worker dies once at this epoch (tests)


@dataclass(kw_only=True)
class TuneSection:
    """The T x alpha (x lr) sweep."""

    num_samples: int = 8
    temperature: list[float] = field(default_factory=lambda: [1.0, 20.0])
    temperature_search: str = "loguniform"  # loguniform | grid
    alpha: list[float] = field(default_factory=lambda: [0.0, 1.0])
    alpha_search: str = "uniform"  # uniform | grid
    lr: list[float] = field(default_factory=list)  # [] = keep distill.lr; [lo, hi] = loguniform
    method: list[str] = field(default_factory=list)  # [] = keep distill.method; else one grid axis of methods
    scheduler: str = "asha"  # asha | none
    searcher: str = "random"  # random | optuna
    grace_period: int = 1  # epochs before ASHA's first rung (Ray's default); rungs at grace * rf^k
    reduction_factor: int = 3
    max_epochs: int = 15
    metric: str = "val_accuracy"
    mode: str = "max"
    max_concurrent: int = 0  # 0 = from the cluster's CPUs
    max_retries: int = 1
    top_k: int = 5
    fail_trial: int = -1  # fault injection: this trial index raises (tests)


@dataclass(kw_only=True)
class FederatedSection:
    """Emulated federated clients on Ray actors."""

    strategy: str = "fedavg"  # fedavg | fedprox | feddf | fedmedian | fedtrimmedavg
    clients: int = 10
    rounds: int = 10
    fraction: float = 1.0
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"  # local optimizer, fresh each round: sgd | adam
    mu: float = 0.01  # FedProx proximal weight
    trim_fraction: float = 0.1  # FedTrimmedAvg: fraction of clients cut from each end, per coordinate
    partition: str = "dirichlet"  # iid | dirichlet
    dirichlet_alpha: float = 0.5
    min_partition_size: int = 2
    min_clients: int = 1
    round_timeout_s: float = 60.0
    actors: int = 0  # 0 = from CPUs and memory
    actor_memory_gb: float = 1.0
    failure_prob: float = 0.0  # fault injection
    proxy_fraction: float = 0.1  # FedDF unlabeled proxy slice of the training split
    distill_epochs: int = 1
    distill_temperature: float = 3.0  # FedDF server distillation and client-side KD
    distill_lr: float = 1e-3  # FedDF server distillation (Adam)
    client_teacher: str = ""  # client-side KD from this teacher artifact
    client_kd_alpha: float = 0.5
    method: str = "kd"  # client KD's and FedDF's soft term (core.methods, knobs distill.dkd_*/dist_*), not fitnet
    augment: AugmentSpec = field(default_factory=AugmentSpec)  # each client's local batches (not FedDF's proxy)
    model: ModelSpec = field(default_factory=lambda: ModelSpec(name="mlp", args={"hidden": [64]}))


# Ray Serve's replicas push autoscaling metrics every 10 s (ray.serve.config.DEFAULT_METRICS_INTERVAL_S): a
# look-back window no longer than that averages one sample at most, and Serve warns it will refuse one.
SERVE_METRICS_INTERVAL_S = 10.0
QUANTIZE_MODES = ("none", "int8")  # int8 = dynamic INT8 of the Linear layers (core.models.quantize_int8)


@dataclass(kw_only=True)
class ServeSection:
    """The HTTP endpoint."""

    artifact: str = "chosen"
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.005
    max_instances: int = 256
    max_body_bytes: int = 1_000_000
    body_timeout_s: float = 10.0  # a request body not fully received by then gets 408 (slow-body clients)
    request_timeout_s: float = 60.0  # Serve's end-to-end limit per HTTP request (http_options)
    auth_token_env: str = ""  # name of the env var holding the bearer token (set where replicas run); "" = no auth
    auth_token_file: str = ""  # or: a file holding it, readable by its owner only (mode 0600), on every node
    # Host header values answered (with or without :port); others get 400 (DNS rebinding against a
    # loopback server). "*" answers any host. serve.host is added by `raydistill serve`.
    allowed_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1", "localhost", "[::1]"])
    allow_unauthenticated_public: bool = False  # a non-loopback host without auth is refused unless true
    quantize: str = "none"  # one of QUANTIZE_MODES
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 60.0
    look_back_period_s: float = 30.0  # window the autoscaler averages ongoing requests over; > SERVE_METRICS_INTERVAL_S
    max_ongoing_requests: int = 32  # per replica; >= max_batch_size so batches can fill
    num_cpus: float = 0.5
    app_name: str = "raydistill"  # Serve application name; redeploying under it is a rolling update
    ingress: str = "proxy"  # proxy (Serve's proxy actor) | haproxy (direct ingress; see serving/ingress.py)
    # The confidence cascade (serving/cascade.py): a teacher deployment answers the instances the
    # student is unsure of (confidence below cascade_threshold), through a Serve deployment handle.
    cascade_teacher: str = ""  # teacher artifact (dir, latest:teacher, URI); "" = no cascade
    cascade_threshold: float = 0.9  # escalate when the student's confidence is below this (0 = never)
    cascade_metric: str = "max_prob"  # max_prob (largest probability) | margin (largest - second largest)
    cascade_timeout_s: float = 2.0  # the teacher's answer within this, else the student's with escalation "failed"
    cascade_min_replicas: int = 0  # the teacher deployment may scale to zero (the first escalation then waits for a replica)
    cascade_max_replicas: int = 1
    # Canary traffic (serving/canary.py): this share of requests, by a stable hash of X-Request-Key,
    # goes to another student version; `raydistill serve promote` / `rollback` end the trial.
    canary_artifact: str = ""  # the new student version (dir, latest:student, URI); "" = no canary
    canary_fraction: float = 0.1  # in [0, 1]; changeable at run time (user_config)


@dataclass(kw_only=True)
class CompressSection:
    """``raydistill compress-report``: distillation vs INT8 quantization vs magnitude pruning."""

    student: str = ""  # distilled student artifact to reuse; "" = distill one in-process
    baseline: str = ""  # student-alone artifact to reuse; "" = train one in-process
    sparsities: list[float] = field(default_factory=lambda: [0.5, 0.9])  # global L1 pruning of the teacher
    finetune_epochs: int = 2  # after pruning, with the mask held fixed
    finetune_lr: float = 1e-4
    latency_batches: list[int] = field(default_factory=lambda: [1, 64])
    latency_repeats: int = 30  # timed runs per batch size; the median is reported
    threads: int = 1  # torch.set_num_threads during latency timing
    output: str = ""  # report dir; "" = <storage>/reports/compress-<time>


@dataclass(kw_only=True)
class PipelineSection:
    """``raydistill pipeline`` (``make demo``): which optional stages run, and what happens after."""

    tune: bool = True  # sweep T x alpha first (trials with 1 worker), distill the best with N workers
    baseline: bool = True  # also train the student alone (same recipe): the summary's "does KD pay" row
    serve: bool = True  # deploy the chosen student and send smoke requests
    smoke_requests: int = 20  # sequential single-instance requests timed for the latency column
    keep_serving: bool = False  # leave the endpoint up after the pipeline (jobs); else shut it down


@dataclass(kw_only=True)
class Config:
    """The whole tree; one section per stage."""

    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    distill: DistillSection = field(default_factory=DistillSection)
    tune: TuneSection = field(default_factory=TuneSection)
    federated: FederatedSection = field(default_factory=FederatedSection)
    serve: ServeSection = field(default_factory=ServeSection)
    compress: CompressSection = field(default_factory=CompressSection)
    pipeline: PipelineSection = field(default_factory=PipelineSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def storage_dir(self) -> Path:
        """Absolute storage path (Ray Train requires absolute paths)."""
        return Path(os.path.expanduser(self.run.storage_path)).resolve()
