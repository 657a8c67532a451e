"""``gradcam vqa IMAGE --question "..."``: answer, list the top answers, and explain the answer's map."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..imaging.draw import available_colormaps
from ._common import CLIError, resolve_device
from .caption import check_language_options

COMMAND = "vqa"
HELP = "answer a question about an image and explain the answer (Grad-CAM, Guided Grad-CAM, counterfactual)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?", metavar="IMAGE", help="image file (or use --scene N)")
    parser.add_argument("--question", "-q", required=True, metavar="TEXT", help='e.g. "what colour is the circle?"')
    parser.add_argument("--answer", metavar="ANSWER", help="explain this answer instead of the model's own")
    parser.add_argument(
        "--counterfactual", action="store_true", help="also map the regions that argue against the answer"
    )
    parser.add_argument("--top", type=int, default=5, metavar="K", help="how many answers to list (default 5)")
    parser.add_argument("--scene", type=int, metavar="N", help="use held-out synthetic scene N (saved as the input)")
    parser.add_argument("--model", default="synthetic", help="synthetic (default: the shipped scenes VQA) or hf:FOLDER")
    parser.add_argument("--weights", help="VQA weights file for the synthetic model (default: shipped)")
    parser.add_argument("--out", default="gradcam-vqa", metavar="DIR", help="output folder (default gradcam-vqa)")
    parser.add_argument("--no-guided", action="store_true", help="Grad-CAM maps only")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    parser.add_argument("--colormap", default="jet", choices=available_colormaps())
    parser.add_argument("--tile", type=int, default=224, metavar="PX", help="tile height in the panel (default 224)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..imaging.io import save_npy_atomic, save_png_atomic, write_json_atomic
    from ..language.explain import answer_index, explain_answer
    from ..language.inputs import load_input, load_model_or_fail
    from ..language.render import answer_figure

    check_language_options(args)
    if args.top < 1:
        raise CLIError(f"--top must be >= 1; got {args.top}")
    if not args.question.strip():
        raise CLIError('--question is empty; ask about the image, e.g. "what colour is the circle?"')
    if args.answer is not None and not args.answer.strip():
        raise CLIError("--answer is empty; give one of the model's answers, or leave it out for the model's own")
    device = resolve_device(args.device)
    loaded = load_model_or_fail("vqa", args.model, args.weights, device)
    if args.answer is not None:
        try:
            answer_index(loaded.model, args.answer)  # names are matched ignoring case; 'color' is 'colour'
        except InputError:
            answers = ", ".join(loaded.model.answers)
            raise CLIError(f"--answer {args.answer!r} is not one of {loaded.name}'s answers: {answers}") from None
    image, x, geometry, stem = load_input(args.image, args.scene, loaded.preprocess, device)
    options = {"answer": args.answer, "guided": not args.no_guided, "top": args.top}
    explanations = [explain_answer(loaded.model, x, args.question, **options)]
    if args.counterfactual:
        explanations.append(explain_answer(loaded.model, x, args.question, counterfactual=True, **options))
    figure = answer_figure(image, explanations, geometry, alpha=args.alpha, colormap=args.colormap, tile=args.tile)
    main = explanations[0]
    out = Path(args.out)
    files = {"panel": f"{stem}.vqa.png", "gradcam": f"{stem}.{main.answer}.gradcam.npy"}
    if args.scene is not None:
        files["input"] = f"{stem}.png"
        save_png_atomic(out / files["input"], image)
    save_png_atomic(out / files["panel"], figure)
    save_npy_atomic(out / files["gradcam"], main.gradcam.detach().cpu().numpy())
    if args.counterfactual:
        files["counterfactual"] = f"{stem}.{main.answer}.counterfactual.npy"
        save_npy_atomic(out / files["counterfactual"], explanations[1].gradcam.detach().cpu().numpy())
    write_json_atomic(
        out / f"{stem}.vqa.json",
        {
            "question": args.question,
            "predicted": main.predicted,
            "explained": main.answer,
            "score": main.score,
            "top": [{"answer": a, "probability": round(p, 6)} for a, p in main.top],
            "counterfactual": args.counterfactual,
            "model": loaded.name,
            "layer": main.layer,
            "files": files,
        },
    )
    print(f"question: {args.question}")
    print(f"answer: {main.predicted}" + ("" if main.answer == main.predicted else f" (explaining {main.answer!r})"))
    for rank, (name, probability) in enumerate(main.top, 1):
        print(f"  {rank}. {name:<12} {probability:.3f}")
    print(f"panel: {out / files['panel']}")
    return 0
