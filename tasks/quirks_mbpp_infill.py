"""mbpp-infill-single: MBPP test-split rows left out of the build, with the reason."""

EXCLUDED = {
    367: "its asserts use trees (root, root1, root2) that only its test_setup_code builds, the "
         "one test-split row with set-up code; without it the reference fails its own tests "
         "(the known MBPP quirk), and the recipe's program is the code and the asserts alone",
}
