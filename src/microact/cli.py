"""The ``microact`` command line: thin subcommands over the library.

Each subcommand parses its arguments here and calls one function elsewhere in the package
(``module:function`` in ``_HANDLERS``), imported only when that subcommand runs, so
``microact --help`` is instant and a missing optional dependency only affects the command that
needs it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from microact import __version__
from microact.errors import MicroactError

# subcommand -> "module:function"; the function takes the parsed argparse.Namespace and returns an exit code.
_HANDLERS = {
    "synth": "microact.data.synth:cli_main",
    "crop": "microact.data.crop.run:cli_main",
    "flow": "microact.data.flow:cli_main",
    "data check": "microact.data.check:cli_main",
    "train": "microact.engine.train:cli_main",
    "test": "microact.engine.evaluate:cli_main",
    "ensemble": "microact.results:cli_ensemble",
    "submit": "microact.results:cli_submit",
    "compare": "microact.compare:cli_main",
    "predict": "microact.predict:cli_main",
    "convert": "microact.models.checkpoints:cli_convert",
    "export": "microact.export:cli_main",
    "bench backbone": "microact.bench.backbone:cli_main",
    "bench train": "microact.bench.train:cli_main",
    "bench data": "microact.bench.data:cli_main",
    "bench e2e": "microact.bench.e2e:cli_main",
    "bench memory": "microact.engine.memory:cli_main",
    "demo": "microact.demo:cli_main",
    "info": "microact.info:cli_main",
}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows an option's default unless it says nothing (None, an off switch) or the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        # identity, not ==: a default of 0 (e.g. --workers 0 = all cores) is a value to show, not an off switch
        empty_list = isinstance(action.default, list) and not action.default  # overrides: none given
        if action.default is None or action.default is False or empty_list or "default" in help_text.lower():
            return help_text
        return super()._get_help_string(action)


def _sub(subparsers, name: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=help_text, description=description or help_text, formatter_class=_Formatter)


def _add_overrides(p: argparse.ArgumentParser, help_text: str) -> None:
    # default=[]: argparse counts a "*" positional without a default as required, so a missing argument before it
    # was reported as "the following arguments are required: out, overrides"
    p.add_argument("overrides", nargs="*", default=[], help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microact",
        description="Micro-action recognition toolkit (MA-52 / MAC 2024). Run 'microact COMMAND --help' for details.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"microact {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # synth ----------------------------------------------------------------------------------
    p = _sub(sub, "synth", "write a synthetic MA-52-style dataset of real H.264 clips",
             "Render seated figures doing subtle fine actions (grouped into MA-52's 7 body parts) as H.264 mp4 clips, "
             "with MA-52 list files, label_name.txt and ground-truth person boxes (boxes.json).")
    p.add_argument("out", help="output folder")
    p.add_argument("--num-classes", type=int, default=12, help="number of fine classes (taken from MA-52's 52, spread over the body parts)")
    p.add_argument("--clips-per-class", type=int, default=30, help="clips per class (the mean, with --long-tail)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same files")
    p.add_argument("--frames", type=int, default=32, help="frames per clip")
    p.add_argument("--fps", type=int, default=15, help="frames per second")
    p.add_argument("--width", type=int, default=256, help="frame width in pixels")
    p.add_argument("--height", type=int, default=192, help="frame height in pixels")
    p.add_argument("--long-tail", action="store_true", help="MA-52-like long-tailed class distribution")
    p.add_argument("--subject-variation", type=float, default=1.0, help="0 = identical subjects, 1 = full variation in size, position, colour")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of clips in the val list")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of clips in the test list")
    p.add_argument("--workers", type=int, default=0, help="parallel writer processes (0 = all cores)")

    # crop -----------------------------------------------------------------------------------
    p = _sub(sub, "crop", "person-crop every video of a folder with one static box per video",
             "Detect the person on sampled frames, unite the boxes, add margins, pad to w/h >= min-aspect, and write "
             "cropped H.264 videos with the same names plus OUT_DIR/boxes.json. Resumable: finished files are skipped.")
    p.add_argument("in_dir", help="folder of input videos (list files are copied along)")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--detector", default="auto", choices=["auto", "mediapipe", "haar", "yolo", "onnx", "none"],
                   help="person detector; auto = mediapipe if installed, else Haar face")
    p.add_argument("--weights", default=None, help="weights file for --detector yolo/onnx")
    p.add_argument("--margins", type=int, nargs=4, default=[-60, -100, 80, 60], metavar=("X0", "Y0", "X1", "Y1"),
                   help="box margins in pixels at 1080p (scaled with the frame height)")
    p.add_argument("--min-aspect", type=float, default=0.6, help="minimum width/height of the box")
    p.add_argument("--sample-frames", type=int, default=8, help="frames per video given to the detector")
    p.add_argument("--short-side", type=int, default=320, help="downscale the cropped video's short side (0 = keep)")
    p.add_argument("--crf", type=int, default=18,
                   help="x264 quality of the cropped videos, 0-51 (lower = better, larger)")
    p.add_argument("--no-fast-decode", dest="fast_decode", action="store_false",
                   help="encode with CABAC, deblocking and x264's B-frames (2-5x slower to decode in training; "
                        "without this flag crop.fast_decode=%(default)s)")
    p.add_argument("--workers", type=int, default=0, help="parallel processes (0 = all cores)")
    p.add_argument("--preview", type=int, default=8, help="videos shown in the preview image (0 = none)")
    p.add_argument("--overwrite", action="store_true", help="redo videos that are already cropped")

    # flow -----------------------------------------------------------------------------------
    p = _sub(sub, "flow", "write the optical-flow video of every video of a folder (two-stream recipes)",
             "Farneback flow between consecutive frames, drawn as colour (hue = direction, brightness = speed, "
             "SEED.md §2.9), written as H.264 mp4 at 30 fps with the same relative names; one frame shorter than "
             "the source. Point data.flow_dir at OUT_DIR. Resumable: finished files are skipped.")
    p.add_argument("in_dir", help="folder of input videos (searched recursively)")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--workers", type=int, default=0, help="parallel processes (0 = all cores)")
    p.add_argument("--overwrite", action="store_true", help="redo videos whose flow video already exists")

    # data check -----------------------------------------------------------------------------
    p = _sub(sub, "data", "dataset utilities")
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data_sub.required = True
    p = _sub(data_sub, "check", "scan a dataset: list files and videos; exit 1 when anything is wrong")
    p.add_argument("root", help="dataset folder with the list files")
    p.add_argument("--lists", nargs="*", default=None, help="list files to check (default: every *_list_videos.txt)")
    p.add_argument("--video-dir", default="", help="folder of the videos, relative to root")
    p.add_argument("--num-classes", type=int, default=None,
                   help="labels must lie in [0, num-classes) (default: the --classes file's count, else 52)")
    p.add_argument("--classes", default=None,
                   help="classes file ('id<TAB>name[<TAB>group]' per line; relative to root or absolute): checked, "
                        "and its count bounds the labels (default: MA-52's 52 classes)")
    p.add_argument("--flow-dir", default=None,
                   help="folder of the optical-flow videos (data.flow_dir, relative to root): each listed video "
                        "needs one, with one frame fewer than the video")
    p.add_argument("--decoder", default="pyav", choices=["pyav", "decord"], help="decoder used to open the videos")
    p.add_argument("--no-decode", action="store_true", help="check list files and file presence only")
    p.add_argument("--workers", type=int, default=0, help="parallel processes (0 = all cores)")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")

    # train ----------------------------------------------------------------------------------
    p = _sub(sub, "train", "train a model from a recipe (one process, or under torchrun for several GPUs/nodes)",
             "Examples:\n  microact train configs/tiny_synth.yaml data.root=demo_out/data_cropped --out runs/tiny\n"
             "  torchrun --nproc_per_node=8 -m microact.cli train configs/videomae_b_k710_frame_coarse_tsn_trainval.yaml "
             "data.root=/data/ma52 --out runs/best")
    p.add_argument("config", help="YAML recipe (see configs/)")
    _add_overrides(p, "dotted overrides such as train.epochs=2 data.root=/data/ma52")
    p.add_argument("--out", required=True, help="run directory (checkpoints, logs, plots)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")

    # test -----------------------------------------------------------------------------------
    p = _sub(sub, "test", "multi-clip testing: averaged probabilities, metrics, dumps")
    p.add_argument("config", help="YAML recipe used for training (or any recipe with the same model)")
    p.add_argument("checkpoint", help="weights: a run's model_final.safetensors / model_best.safetensors, or a checkpoint")
    _add_overrides(p, "dotted overrides such as eval.test_clips=3")
    p.add_argument("--split", default="test", choices=["test", "val"], help="which list to evaluate")
    p.add_argument("--list", default=None, help="evaluate this list file instead of the split's")
    p.add_argument("--dump", default=None, help="write the mmaction2-style result pickle here (a .npz copy is written beside it)")
    p.add_argument("--out", default=None,
                   help="folder for metrics.json, plots and submissions (default: NAME_report beside the --dump "
                        "NAME.pkl, else SPLIT_results beside the checkpoint)")

    # ensemble -------------------------------------------------------------------------------
    p = _sub(sub, "ensemble", "weighted ensemble of several models' result dumps")
    p.add_argument("dumps", nargs="+", help="result dumps (.pkl from microact or mmaction2, or .npz)")
    p.add_argument("--weights", type=float, nargs="*", default=None, help="one weight per dump (default: equal)")
    p.add_argument("--search-on", nargs="*", default=None, help="validation dumps (same models, same order) to search weights on")
    p.add_argument("--grid", type=float, nargs="*", default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], help="weight values tried by the search")
    p.add_argument("--cv-folds", type=int, default=5,
                   help="with --search-on: also cross-validate the search on the validation videos (weights searched "
                        "on the other folds predict each fold), to tell a real gain over equal weights from one that "
                        "suits these videos only; 0 skips it")
    p.add_argument("--list", default=None,
                   help="test list file the dumps were computed on: gives the submission its video names when the "
                        "dumps have none (mmaction2's), and checks the order of those that have")
    p.add_argument("--classes", default=None,
                   help="classes file the models were trained with (data.classes), for dumps that do not record "
                        "their classes (pickles without their .npz); default: MA-52 for 52 classes")
    p.add_argument("--out", required=True, help="output folder: dump, metrics, submission")

    # compare --------------------------------------------------------------------------------
    p = _sub(sub, "compare", "is one model better than another, or is the difference noise?",
             "Score result dumps of one labelled list (validation) and compare each with the first: F1_mean and its "
             "parts, each difference with a paired bootstrap 95 % interval over the videos, McNemar's exact test on "
             "top-1, and the classes whose F1 moved most.")
    p.add_argument("dumps", nargs="+", help="result dumps of one list (.pkl from microact or mmaction2, or .npz); the "
                                            "first is the baseline")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (0: no intervals)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed: the same seed draws the same resamples")
    p.add_argument("--resample-by", choices=["video", "subject"], default="video",
                   help="bootstrap unit: single videos, or subjects (MA-52's SSSS_VV_NNNN names: all clips of one "
                        "person drawn together, since they are not independent; wider, more honest intervals)")
    p.add_argument("--macro-labels", choices=["present", "all"], default="present",
                   help="label set of the macro F1 terms (metric.macro_labels; present = the seed's)")
    p.add_argument("--coarse-rule", choices=["map_top1", "sum_probs", "coarse_head"], default=None,
                   help="body-part (group) rule for every dump (default: the rule each dump was scored with, else "
                        "map_top1, the seed's)")
    p.add_argument("--list", default=None, help="the list file the dumps were computed on (names and labels for "
                                                "mmaction2 dumps, which carry neither names nor, for test, labels)")
    p.add_argument("--classes", default=None,
                   help="classes file the models were trained with, for dumps that do not record their classes")
    p.add_argument("--top-classes", type=int, default=5, help="per-class F1 changes to print per model")
    p.add_argument("--out", default=None, help="folder for compare.json, per_class_delta.csv and the plots")

    # submit ---------------------------------------------------------------------------------
    p = _sub(sub, "submit", "write challenge submission files from a result dump")
    p.add_argument("dump", help="result dump (.pkl or .npz)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--list", default=None, help="test list file giving the video names (when the dump has none)")
    p.add_argument("--format", default="all", choices=["mac2024", "ma52", "all"], help="which submission files to write")
    p.add_argument("--coarse-rule", default=None, choices=["map_top1", "sum_probs", "coarse_head"],
                   help="how body parts are predicted (default: the rule microact test recorded in the dump, else "
                        "map_top1; coarse_head needs a dump made with predict.coarse_rule=coarse_head)")

    # predict --------------------------------------------------------------------------------
    p = _sub(sub, "predict", "recognise micro-actions in any video: crop, test pipeline, top-k classes")
    p.add_argument("videos", nargs="+", help="video files, or folders of videos")
    p.add_argument("--model", default=None,
                   help="preset name (default: the config's, else the one recorded in --checkpoint, else the best "
                        "seed model)")
    p.add_argument("--config", default=None,
                   help="recipe the checkpoint was trained with (default: the recipe recorded in --checkpoint, "
                        "which microact training writes into its weights files)")
    p.add_argument("--checkpoint", default=None, help="trained weights (.safetensors); without it the model is untrained")
    p.add_argument("--detector", default="auto", choices=["auto", "mediapipe", "haar", "none"], help="person detector for the crop")
    p.add_argument("--top-k", type=int, default=5, help="classes shown per video")
    p.add_argument("--json", default=None, help="write the predictions to this JSON file")
    p.add_argument("--annotate", default=None,
                   help="write an annotated video (.mp4) or GIF (.gif, at most 480 px on its longer side) here (one "
                        "video only, or a folder)")
    p.add_argument("--window", type=float, default=None, metavar="SECONDS",
                   help="untrimmed videos: predict sliding windows this long instead of the whole video as one clip")
    p.add_argument("--stride", type=float, default=None, metavar="SECONDS",
                   help="seconds between window starts (default: half a window)")
    p.add_argument("--timeline", default=None,
                   help="with --window: write a timeline plot (.png) here (one video only, or a folder)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")

    # convert --------------------------------------------------------------------------------
    p = _sub(sub, "convert", "convert a pretrained checkpoint (official, InternVideo, mmaction2, HF) to microact's layout")
    p.add_argument("input", help="checkpoint file or HuggingFace save_pretrained folder")
    p.add_argument("output", help="output .safetensors file")
    p.add_argument("--backbone", default=None, help="backbone name to check shapes against (default: guessed from the weights)")
    p.add_argument("--keep-head", action="store_true", help="keep the classifier head weights")

    # export ---------------------------------------------------------------------------------
    p = _sub(sub, "export", "export trained weights as an ONNX graph over pixels, checked with onnxruntime",
             "The graph takes pixels 0..255 [batch, C, T, H, W] (uint8; C = 3 RGB, 6 = RGB then flow for two-stream "
             "models), normalises them and applies the input mode inside, and outputs fine_probs [batch, K] (plus "
             "coarse_head_probs [batch, G] for models with a coarse head: one column per group, MA-52's 7 body "
             "parts or the groups of the classes the weights record). Class names and groups, frames, size, "
             "mean/std and the recipe are in the file's metadata (microact.*). Needs the onnx extra: "
             'pip install -c constraints.txt "microact[onnx]".\n'
             "Examples:\n  microact export runs/best/model_final.safetensors best.onnx\n"
             "  microact export model.safetensors model.onnx --config configs/tiny_synth.yaml --opset 17 --time")
    p.add_argument("weights", help="trained weights (.safetensors; a run's model_final / model_best)")
    p.add_argument("out", help="the .onnx file to write")
    _add_overrides(p, "dotted overrides such as data.clip_len=8")
    p.add_argument("--config", default=None,
                   help="recipe the weights were trained with (default: the recipe recorded in the weights file)")
    p.add_argument("--model", default=None, help="preset name (default: the recipe's)")
    p.add_argument("--batch", type=int, default=1,
                   help="clips per batch in the check and the timing (the fixed batch with --static-batch)")
    p.add_argument("--static-batch", action="store_true",
                   help="fix the batch axis at --batch (default: a dynamic axis named 'batch')")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default: 17 with the TorchScript exporter, 18 with dynamo; --attention sdpa "
                        "needs 14 or newer)")
    p.add_argument("--attention", default="math", choices=["math", "sdpa"],
                   help="attention in the graph: math = explicit matmul-softmax-matmul (any opset), sdpa = "
                        "PyTorch's scaled_dot_product_attention translation (opset >= 14)")
    p.add_argument("--exporter", default="auto", choices=["auto", "torchscript", "dynamo"],
                   help="torch.onnx exporter: auto = TorchScript (dynamo=False) while this PyTorch has it, else "
                        "dynamo (torch.export + onnxscript)")
    p.add_argument("--input-dtype", default="uint8", choices=["uint8", "float32"],
                   help="dtype of the pixel input (values 0..255 either way)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="run the graph in onnxruntime on random clips and compare with PyTorch (the file is removed "
                        "when they differ)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest max abs difference of the probabilities the check accepts (default: 1e-4)")
    p.add_argument("--time", action="store_true",
                   help="also print the CPU forward time of PyTorch and onnxruntime at --batch")
    p.add_argument("--repeats", type=int, default=5, help="timed forward passes with --time (median reported)")

    # bench ----------------------------------------------------------------------------------
    p = _sub(sub, "bench", "benchmarks (figures are printed, never asserted)")
    bench_sub = p.add_subparsers(dest="bench_command", metavar="SUBCOMMAND")
    bench_sub.required = True
    q = _sub(bench_sub, "backbone", "ViT forward / forward+backward: ours vs HuggingFace VideoMAE (sdpa, eager)")
    q.add_argument("--model", default="videomae_base", help="backbone name")
    q.add_argument("--batch", type=int, nargs="*", default=[1, 4], help="batch sizes")
    q.add_argument("--precision", nargs="*", default=None,
                   help="precisions (default: fp32 bf16; fp32 only on a CPU without hardware bf16)")
    q.add_argument("--repeats", type=int, default=3, help="timed repeats per cell (best and median reported)")
    q.add_argument("--device", default="auto", help="auto | cpu | cuda")
    q.add_argument("--json", default=None, help="also write the figures here")
    q = _sub(bench_sub, "train", "full recognizer training step: clips/s, peak memory, MFU; HF VideoMAE as the peer")
    q.add_argument("--preset", default="videomae_b_k710_frame_coarse_tsn", help="model preset")
    q.add_argument("--batch", type=int, default=None, help="clips per step (default: a size that fits the device)")
    q.add_argument("--precision", default=None, choices=["bf16", "fp16", "fp32"],
                   help="autocast precision (default: bf16; fp32 on a CPU without hardware bf16, as microact train)")
    q.add_argument("--compile", action="store_true", help="torch.compile the model")
    q.add_argument("--grad-checkpointing", action="store_true", help="activation checkpointing")
    q.add_argument("--steps", type=int, default=5, help="timed steps")
    q.add_argument("--device", default="auto", help="auto | cpu | cuda")
    q.add_argument("--no-peer", dest="peer", action="store_false",
                   help="skip the HF VideoMAE peer (default: peer=%(default)s)")
    q.add_argument("--profile", default=None, metavar="DIR",
                   help="also profile our step: time by kind of work (and GPU busy time), Chrome trace into DIR")
    q.add_argument("--sdpa-kernel", default="auto", choices=["auto", "cudnn", "flash", "efficient"],
                   help="fused attention kernel our model tries first (model.sdpa_kernel; GPU only; default: "
                        "PyTorch's order)")
    q.add_argument("--json", default=None, help="also write the figures here")
    q = _sub(bench_sub, "data", "training data pipeline throughput: raw vs cropped clips, ours vs decord+numpy")
    q.add_argument("--workers", type=int, nargs="*", default=[0, 2], help="DataLoader workers to try")
    q.add_argument("--clips", type=int, default=16, help="clips per measurement")
    q.add_argument("--json", default=None, help="also write the figures here")
    q = _sub(bench_sub, "e2e", "decoded synthetic clips through the loader into the training step")
    q.add_argument("--preset", default="videomae_tiny_frame_coarse_tsn", help="model preset")
    q.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    q.add_argument("--batch", type=int, default=4, help="clips per training step")
    q.add_argument("--steps", type=int, default=10,
                   help="timed steps of the step-alone pass; the end-to-end pass runs one epoch of steps + 2 batches")
    q.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    q.add_argument("--cache-dir", default=None, help="use the decode-once cache (data.cache_dir) in this folder")
    q.add_argument("--cache-format", default=None, choices=["npy", "jpeg"],
                   help="data.cache_format with --cache-dir: npy (lossless, ~46 MB per clip, the default) or jpeg "
                        "(lossy, ~10-20x smaller)")
    q.add_argument("--jitter-on-device", action="store_true",
                   help="aug.jitter_erasing_on=device: the workers leave ColorJitter and RandomErasing to the step")
    q.add_argument("--json", default=None, help="also write the figures here")

    q = _sub(bench_sub, "memory", "estimated training-step memory per preset and batch; what fits a GPU (no GPU needed)")
    q.add_argument("--preset", nargs="+", default=["videomae_b_k710_frame_coarse_tsn", "videomae_b_k710_timesformer",
                                                   "videomae_l_k700_timesformer", "videomae_h_timesformer"],
                   help="model presets")
    q.add_argument("--batch", type=int, nargs="+", default=[1, 6, 10, 24], help="micro-batch sizes to show")
    q.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    q.add_argument("--gpu-mem-gib", type=float, default=80.0, help="GPU memory to plan for")
    q.add_argument("--json", default=None, help="also write the figures here")

    # demo -----------------------------------------------------------------------------------
    p = _sub(sub, "demo", "end to end on a synthetic dataset: synth, crop, train, test, submit, plots, predict")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--config", default=None, help="recipe (default: configs/tiny_synth.yaml shipped with microact)")
    p.add_argument("--num-classes", type=int, default=12, help="fine classes in the synthetic dataset")
    p.add_argument("--clips-per-class", type=int, default=30, help="clips per class")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset and of training")

    # info -----------------------------------------------------------------------------------
    p = _sub(sub, "info", "versions, device, decoders and detectors available")
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _handler_key(args: argparse.Namespace) -> str:
    if args.command == "data":
        return f"data {args.data_command}"
    if args.command == "bench":
        return f"bench {args.bench_command}"
    return args.command


def _chosen_subparser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the subcommand that ``args`` came from (``microact data check``: the ``check`` parser)."""
    for word in _handler_key(args).split():
        sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub_action.choices[word]
    return parser


def _take_late_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> None:
    """Append the ``key=value`` overrides argparse left over to ``args.overrides``; anything else is an error.

    argparse fills a positional only once, from the words before the first option, so in
    ``microact train R --out DIR data.root=X`` the override comes back unparsed. An option's own value
    (``--out a=b``) never reaches here: argparse has already given it to the option.
    """
    takes_overrides = any(action.dest == "overrides" for action in parser._actions)
    overrides = list(getattr(args, "overrides", None) or [])
    unrecognized = []
    after_separator = False
    for token in extras:
        if token == "--" and not after_separator:  # "--" ends the options: what follows are overrides, never options
            after_separator = True
            continue
        looks_like_override = "=" in token and (after_separator or not token.startswith("-"))
        if takes_overrides and looks_like_override:
            overrides.append(token)
        else:
            unrecognized.append(token)
    if unrecognized:
        hint = " (overrides are written key=value, e.g. train.epochs=2)" if takes_overrides else ""
        parser.error(f"unrecognized arguments: {' '.join(unrecognized)}{hint}")  # the subcommand's usage line
    if takes_overrides:
        args.overrides = overrides


def parse_command_line(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line, with ``key=value`` overrides taken from anywhere on it (before or after options).

    Exits with status 2 and the subcommand's usage line for anything it does not recognise.
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _take_late_overrides(_chosen_subparser(parser, args), args, extras)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(argv)
    key = _handler_key(args)
    module_name, func_name = _HANDLERS[key].split(":")
    try:
        module = importlib.import_module(module_name)
        handler = getattr(module, func_name)
    except (ImportError, AttributeError) as e:
        if isinstance(e, ImportError) and e.name and not e.name.startswith("microact"):
            print(f"microact {key}: needs the package {e.name!r}, which is not installed ({e})", file=sys.stderr)
            return 2
        print(f"microact {key}: not available yet in this version ({module_name}.{func_name} is missing)", file=sys.stderr)
        return 2
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MicroactError as e:
        if e.same_on_every_rank and _torchrun_rank() > 0:
            # Rank 0 prints it (one line per process would repeat it N times). torchrun stops every worker within
            # 0.1 s of the first failure, so this rank waits for rank 0 to fail first and print: ranks start up
            # seconds apart (importing torch). torchrun ends this wait when rank 0 exits.
            time.sleep(_RANK0_GRACE_S)
            return 2
        print(f"microact {key}: error: {e}", file=sys.stderr)
        return 2


_RANK0_GRACE_S = 10.0  # how long a rank other than 0 waits for rank 0 to report an error they share


def _torchrun_rank() -> int:
    """This process's rank under torchrun (``RANK`` when ``WORLD_SIZE`` > 1, as ``engine.distributed`` reads
    them), 0 otherwise."""
    try:
        return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except ValueError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
