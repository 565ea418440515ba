//! `warren`: the one binary. It parses flags (each with a `WARREN_*`
//! environment variable), sets up logging and the shutdown signal, and hands
//! over to the library crates, which hold all the logic.

mod cli;
mod client;
mod up;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use tokio_util::sync::CancellationToken;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches).map(|cli| (cli, matches)));
    let (mut cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => return cli::exit_on_parse_error(err),
    };
    if let Command::Supervise(args) = &cli.command {
        // Synchronous and small: no runtime, no logging (its stderr is the
        // test's output).
        return runner::supervisor::main(&args.command);
    }
    if let Err(err) = cli::resolve_secrets(&mut cli, &matches) {
        eprintln!("warren: {err}");
        return ExitCode::from(2);
    }
    init_logging();
    if matches!(
        cli.command,
        Command::Observer(_) | Command::Runner(_) | Command::Dispatcher(_) | Command::Up(_)
    ) {
        // These hold the broker password and other secrets for as long as
        // they run: processes of the same user (tests) may not read them.
        runner::become_non_dumpable();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("warren: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            // One line: the error and its causes.
            eprintln!("warren: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_on_signals();
    let broker = cli.common.broker_config();
    match cli.command {
        Command::Observer(args) => {
            observer::run(args.into_config(broker), shutdown).await?;
        }
        Command::Runner(args) => {
            runner::run(args.into_config(broker), shutdown).await?;
        }
        Command::Dispatcher(args) => {
            dispatcher::run(args.into_config(broker), shutdown).await?;
        }
        Command::Up(args) => {
            up::run(&cli.common, args, shutdown).await?;
        }
        Command::Topology(args) => {
            cli::topology(&broker, args, shutdown).await?;
        }
        Command::Status(args) => return client::status(args).await,
        Command::Show(args) => return client::show(args).await,
        Command::Log(args) => return client::log(args).await,
        Command::Rerun(args) => return client::rerun(args).await,
        Command::Trigger(args) => return client::trigger(args).await,
        Command::Runners(args) => return client::runners(args).await,
        // Handled in main, before the runtime starts.
        Command::Supervise(_) => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // lapin logs an ERROR on every orderly close; our own lines report
        // real connection losses. `RUST_LOG=info,lapin=debug` shows lapin.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,lapin=warn,lapin::channels=off")
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A token cancelled on the first SIGINT or SIGTERM: the explicit shutdown
/// signal every component receives.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        trigger.cancel();
    });
    token
}
