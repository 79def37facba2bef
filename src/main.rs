use std::process::ExitCode;

fn main() -> ExitCode {
    mdingest::cli::main()
}
