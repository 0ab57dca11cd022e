fn main() {
    println!("mmlab");
}
