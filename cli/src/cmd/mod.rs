//! One module per subcommand: an `Args` struct (clap derive) and `run(args) -> anyhow::Result<()>`.
// MODULES-BEGIN
// MODULES-END
