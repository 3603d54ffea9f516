"""Train the Transformer: `python train.py` trains the tiny preset on the built-in task.

    python train.py                                    # default: number_words, runs/default
    python train.py --config base --config.data.dataset=wmt14_translate/de-en --workdir runs/wmt
    python train.py --config multi30k --config.data.train_files=../shared/data/multi30k/train ...
    python train.py --config lm                        # GPT-like LM on the German side
    python train.py --config mlm                       # BERT-like masked-token model
    python train.py --help                             # every config field with its doc

Running the same command again resumes from the newest checkpoint in the workdir.
"""

from __future__ import annotations

import argparse
import logging
import sys

from flax_transformer import cli


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None,
                        help="run directory (config, tokenizer, checkpoints, metrics); "
                             "default runs/PRESET")
    parser.add_argument("--fresh", action="store_true",
                        help="if the workdir holds a run of another config, move it aside "
                             "(to WORKDIR.old-TIME) and start over instead of refusing")
    parser.add_argument("--coordinator_address", default="",
                        help="multi-process: host:port of process 0 (or JAX_COORDINATOR_ADDRESS)")
    parser.add_argument("--num_processes", type=int, default=0,
                        help="multi-process: number of processes (or JAX_NUM_PROCESSES)")
    parser.add_argument("--process_id", type=int, default=-1,
                        help="multi-process: this process's index (or JAX_PROCESS_ID)")
    cli.add_compilation_cache_flag(parser)
    cli.add_config_arguments(parser, default_preset="default")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from flax_transformer import config as config_lib

    try:
        config = cli.config_from_args(args)
    except config_lib.ConfigError as error:
        cli.fail(str(error))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)  # Orbax/TFDS chatter; our warnings remain
    from flax_transformer import loop, parallel

    cli.use_compilation_cache(args)
    parallel.initialize_distributed(args.coordinator_address, args.num_processes,
                                    args.process_id)
    workdir = args.workdir or f"runs/{args.config}"
    try:
        loop.main(config, workdir, fresh=args.fresh)
    except loop.USER_ERRORS as error:
        if argv is None:  # a process of its own (tests call main(argv) in theirs)
            cli.exit_within(10)  # a failed save can leave Orbax threads waiting forever
        cli.fail(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
