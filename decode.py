"""Decode with a trained run: `python decode.py --workdir runs/default --input "..."`.

    python decode.py --workdir runs/default --input "four hundred twenty-one"
    python decode.py --workdir runs/default --input_file test.en --reference_file test.de
    echo "seven" | python decode.py --workdir runs/default --method greedy
    python decode.py --workdir runs/default --input "forty-two" --attention_plot att.png
    python decode.py --workdir runs/lm --input "drei"                  # model.kind decoder_only
    python decode.py --workdir runs/mlm --input "drei<mask>zwanzig" --top_k 3   # encoder_only
    python decode.py --workdir runs/default --input "seven hundred twelve" --nbest 4 \\
        --print_scores
    python decode.py --workdir runs/default --input_file test.en --output_format jsonl

What a line becomes depends on the run's model.kind:
  encoder_decoder  its translation (search: --method greedy, beam or sample);
  decoder_only     the prompt as typed followed by its continuation (same searches, KV
                   cache; the prompt is read in one model call); an empty line is
                   continued from BOS alone;
  encoder_only     the line with each <mask> (one piece each) replaced by its likeliest
                   piece; --top_k N adds, under each output, one line per mask:
                   "  <mask> 1: und 97.3% | hundert 1.1% | ...". Lines without <mask>
                   are written unchanged with a warning; input without any is refused.
Flags that only fit another kind (--attention_plot without cross-attention, <mask> for a
decoder_only run, search flags for an encoder_only run) are refused with exit status 2.

Outputs go to stdout (or --output_file), one per input line and in input order (N lines
per input with --nbest N or --num_samples N, best first); everything else (what was
restored, warnings, BLEU/chrF, plot paths) goes to stderr.
Search options default to the run's saved config (config.json, section "decode").
A progress bar shows on stderr for files when stderr is a terminal. Decoding runs on
JAX's default device (a GPU/TPU when there is one).

Empty input lines give empty output lines (but for decoder_only, see above). Lines
longer than the model's maximum length (model.max_length tokens, EOS included; a prompt:
model.max_length - 1, BOS included) are truncated to it, with a warning that counts
them, rather than refused.
"""

from __future__ import annotations

import argparse
import sys

from flax_transformer import cli

SEARCH_FLAGS = cli.section_fields("decode")  # --FIELD overrides config.decode.FIELD
KIND_HELP = {"top_k": "; an encoder_only run: list the k likeliest pieces per <mask>",
             "max_extra_length": "; decoder_only: new tokens at most"}


def _checkpoint_name(text: str) -> str:
    if text in ("best", "latest", "averaged") or text.isdigit():
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is not 'best', 'latest', 'averaged' or a step number")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True,
                        help="run directory written by train.py (config.json, "
                             "tokenizer.model, checkpoints/)")
    parser.add_argument("--checkpoint", default="best", type=_checkpoint_name,
                        help="'best' (highest validation score: a checkpoint, or the "
                             "average of the last ones when it scored at least as high), "
                             "'latest', 'averaged' (train.average_last) or a step number "
                             "(default: best)")
    parser.add_argument("--ema", action="store_true",
                        help="use the exponential moving average of the parameters")
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", action="append", default=None, metavar="TEXT",
                    help="a sentence to translate; repeat the flag (or put newlines in "
                         "TEXT) for several. Without --input/--input_file: stdin")
    io.add_argument("--input_file", default=None, metavar="F",
                    help="UTF-8 file, one sentence a line, plain or .gz ('-' = stdin)")
    io.add_argument("--output_file", default=None, metavar="F",
                    help="write translations here instead of stdout")
    io.add_argument("--reference_file", default=None, metavar="R",
                    help="references (plain or .gz), one per input line: print sacreBLEU "
                         "(cased, signature shown), chrF and exact match to stderr")
    io.add_argument("--output_format", default="text", choices=("text", "jsonl"),
                    help="text: hypotheses one per line (default); jsonl: one JSON object "
                         "per input with source, hypotheses, log_probs and scores")
    io.add_argument("--print_scores", action="store_true",
                    help="text format: append TAB log P(hypothesis) TAB length-normalised "
                         "score log P / ((5+|Y|)/6)^length_penalty (GNMT, |Y| counts EOS)")
    io.add_argument("--attention_plot", default=None, metavar="OUT.png",
                    help="draw the cross-attention of every layer and head for the first "
                         "(non-empty) input as heatmaps, source pieces on x, output on y")
    io.add_argument("--self_attention", action="store_true",
                    help="with --attention_plot: also OUT.encoder_self.png and "
                         "OUT.decoder_self.png")
    cli.add_compilation_cache_flag(parser)
    search = parser.add_argument_group(
        "search", "defaults: the run's config.json (section 'decode')")
    for flag, (kind, doc) in SEARCH_FLAGS.items():
        search.add_argument(f"--{flag}", type=kind, default=None,
                            help=doc + KIND_HELP.get(flag, ""), metavar=kind.__name__.upper())
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.input is not None and args.input_file is not None:
        cli.fail("give either --input or --input_file, not both.")
    if args.self_attention and not args.attention_plot:
        cli.fail("--self_attention needs --attention_plot OUT.png.")
    if args.print_scores and args.output_format == "jsonl":
        cli.fail("--print_scores is for --output_format text; jsonl always holds the scores.")
    from flax_transformer import decode_command  # after parsing: --help stays fast

    cli.use_compilation_cache(args)

    request = decode_command.DecodeRequest(
        workdir=args.workdir, checkpoint=args.checkpoint, use_ema=args.ema,
        inputs=None if args.input is None else tuple(args.input),
        input_file=args.input_file, output_file=args.output_file,
        reference_file=args.reference_file, attention_plot=args.attention_plot,
        self_attention=args.self_attention,
        decode_overrides={flag: getattr(args, flag) for flag in SEARCH_FLAGS},
        output_format=args.output_format, print_scores=args.print_scores)
    try:
        decode_command.run(request)
    except decode_command.DECODE_USER_ERRORS as error:
        cli.fail(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
