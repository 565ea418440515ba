//! `warren`: the one binary. It parses flags (each with a `WARREN_*`
//! environment variable), sets up logging and the shutdown signal, and hands
//! over to the library crates, which hold all the logic.

mod cli;
mod client;
mod hook;
mod repo;
mod up;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use tasks::Tasks;
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

/// Runs the command with the signal handler as a tracked task: if it ends
/// (it cannot watch signals), the command is stopped and the exit status is
/// non-zero.
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let tasks = Tasks::new(&CancellationToken::new());
    let signals = watch_signals(&tasks);
    let command = run_command(cli, &signals);
    tokio::pin!(command);
    let outcome = tokio::select! {
        outcome = &mut command => outcome,
        died = tasks.died() => {
            tracing::error!("{died}; stopping");
            signals.shutdown.cancel();
            let _ = command.await;
            Err(anyhow::anyhow!("{died}"))
        }
    };
    tasks.stop(std::time::Duration::from_secs(1)).await;
    outcome
}

async fn run_command(cli: Cli, signals: &Signals) -> anyhow::Result<ExitCode> {
    let shutdown = signals.shutdown.clone();
    let broker = cli.common.broker_config();
    match cli.command {
        Command::Observer(args) => match args.into_mode(broker)? {
            cli::ObserverMode::Alone(config) => observer::run(config, shutdown).await?,
            cli::ObserverMode::Registry(config) => {
                observer::registry::run(config, shutdown).await?
            }
        },
        Command::Runner(args) => {
            runner::run(args.into_config(broker), shutdown).await?;
        }
        Command::Dispatcher(args) => {
            dispatcher::run(args.into_config(broker)?, shutdown).await?;
        }
        Command::Migrate(args) => return cli::migrate(args).await,
        Command::Up(args) => {
            up::run(&cli.common, args, shutdown, signals.again.clone()).await?;
        }
        Command::Topology(args) => {
            cli::topology(&broker, args, shutdown).await?;
        }
        Command::Status(args) => return client::status(args).await,
        Command::Show(args) => return client::show(args).await,
        Command::Log(args) => return client::log(args).await,
        Command::Rerun(args) => return client::rerun(args).await,
        Command::Cancel(args) => return client::cancel(args).await,
        Command::Trigger(args) => return client::trigger(args).await,
        Command::Runners(args) => return client::runners(args).await,
        Command::Repo(command) => return repo::run(command).await,
        Command::Hook(command) => return hook::run(command).await,
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

/// The shutdown signals every component receives.
struct Signals {
    /// Cancelled on the first SIGINT or SIGTERM.
    shutdown: CancellationToken,
    /// Cancelled on the second: `warren up` then stops its children at
    /// once instead of waiting for them.
    again: CancellationToken,
}

/// Watches SIGINT and SIGTERM, in a lifetime task of `tasks`.
fn watch_signals(tasks: &Tasks) -> Signals {
    let signals = Signals {
        shutdown: CancellationToken::new(),
        again: CancellationToken::new(),
    };
    let (first, second) = (signals.shutdown.clone(), signals.again.clone());
    let stopping = tasks.stopping().clone();
    tasks.lifetime("the signal handler", async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        for (token, what) in [(first, ": shutting down"), (second, " again")] {
            tokio::select! {
                _ = stopping.cancelled() => return,
                _ = term.recv() => tracing::info!("SIGTERM{what}"),
                _ = int.recv() => tracing::info!("SIGINT{what}"),
            }
            token.cancel();
        }
        stopping.cancelled().await;
    });
    signals
}
