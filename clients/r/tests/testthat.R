library(testthat)
library(saferoom)

test_check("saferoom")
