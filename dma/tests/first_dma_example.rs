//! Runs the on-ramp example (`cargo run -p dma --example first-dma`, guide chapter 1) and checks
//! what it shows: the device saw the coherent word, both streaming directions carried their
//! bytes, and the pool's `dma:pools` line has Linux's columns.
#[path = "../examples/first-dma.rs"]
mod first_dma;

#[test]
fn first_dma_example_runs_and_shows_each_kind_of_memory() {
    let lines = first_dma::run().expect("the example runs on the simulated machine");
    let text = lines.join("\n");
    assert!(text.contains("the device wrote 0xd0"), "{text}");
    assert!(text.contains("the device read \"hello, device\""), "{text}");
    assert!(text.contains("the CPU read \"hello, CPU\""), "{text}");
    let pool = lines.iter().find(|l| l.starts_with("first-cmd")).expect("a dma:pools line for the pool");
    let cols: Vec<&str> = pool.split_whitespace().collect();
    assert_eq!(&cols[1..5], ["2", "128", "32", "1"], "in use, total, size, pages: {pool}");
}
