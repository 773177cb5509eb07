//! Prints the description of each directory given, as the tests compare trees
//! (`test_support::tree::describe`), each after a `[<dir>]` line. scripts/make-golden-archives
//! records the golden archives' trees with it.

fn main() {
    for dir in std::env::args().skip(1) {
        println!("[{dir}]");
        print!("{}", test_support::tree::describe(std::path::Path::new(&dir)));
    }
}
