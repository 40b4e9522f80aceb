//! `studiodrive-operator`: `crds` prints the CRDs (temporary bootstrap main).
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("crds") {
        if let Some(dir) = args.get(3) {
            for def in operator::crd::all() {
                std::fs::write(std::path::Path::new(dir).join(operator::crd::file_name(&def)), operator::crd::to_yaml(&def)?)?;
            }
        } else {
            print!("{}", operator::crd::all_yaml()?);
        }
    }
    Ok(())
}
