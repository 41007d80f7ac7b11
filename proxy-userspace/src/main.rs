fn main() -> anyhow::Result<()> {
    proxy_userspace::caps::require()?;
    let dp = proxy_userspace::dataplane::Dataplane::load(&Default::default())?;
    println!("loaded; {} flows", dp.flow_count());
    Ok(())
}
