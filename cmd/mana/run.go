package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// usage is printed by `mana --help`.
const usage = `mana — the Mana Core identity and credit service

Usage:
  mana serve [--components=api,relay,projections,workers] [--port N]
  mana migrate
  mana ledger verify [--checkpoint ID|latest] | checkpoint | check-proof --proof FILE --keys FILE
  mana events export [--from C] [--to C] [--types a,b] [--format ndjson|csv]
  mana events tail [--from C] [--types a,b]
  mana events import [--file FILE|-] [--batch N]
  mana projections status|rebuild NAME|skip NAME CURSOR
  mana keys generate|rotate|list
  mana admin set-role EMAIL ROLE | service-key create APP | service-key revoke ID | grant|adjust|refund ...

Configuration comes from the environment (see README.md). Every command
accepts --help. Exit status is 0 on success, non-zero with a one-line
reason on stderr otherwise.
`

// errUsage marks a command-line mistake; run prints usage for it.
var errUsage = errors.New("usage")

// env is what every command receives: the parsed configuration, a logger
// and the output streams.
type env struct {
	cfg    *Config
	log    *slog.Logger
	stdout io.Writer
	stderr io.Writer
}

// run is the whole program behind main: it parses the configuration once,
// dispatches the subcommand and turns its error into an exit code and a
// one-line reason on stderr.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			fmt.Fprintln(stderr, "mana: missing command (see mana --help)")
			return 2
		}
		return 0
	}
	commands := map[string]func(context.Context, *env, []string) error{
		"serve":       cmdServe,
		"migrate":     cmdMigrate,
		"ledger":      cmdLedger,
		"events":      cmdEvents,
		"projections": cmdProjections,
		"keys":        cmdKeys,
		"admin":       cmdAdmin,
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "mana: unknown command %q (see mana --help)\n", args[0])
		return 2
	}
	cfg, err := parseConfig(getenv)
	if err != nil {
		fmt.Fprintf(stderr, "mana: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	err = cmd(ctx, &env{cfg: cfg, log: log, stdout: stdout, stderr: stderr}, args[1:])
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "mana %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "mana %s: %s\n", args[0], oneLine(err.Error()))
		return 1
	}
}

// newFlags returns a flag set whose --help prints the command's usage to
// stdout and whose errors are returned, not printed twice.
func newFlags(e *env, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stdout)
	fs.Usage = func() {
		fmt.Fprintf(e.stdout, "Usage: mana %s\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return nil
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// parseInterspersed parses flags wherever they appear among the
// positional arguments (Go's flag package stops at the first positional),
// and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
