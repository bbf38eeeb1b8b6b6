# The gateway these tests run against: tests/test_r_client.py starts a real one and sets
# SAFEROOM_TEST_URL, SAFEROOM_TEST_TOKEN (an investigator: no row limit), SAFEROOM_TEST_ANALYST_TOKEN
# (alice, an analyst), SAFEROOM_TEST_LIMITED_TOKEN (a role cut at 5 rows) and SAFEROOM_TEST_EXPECTED (a JSON
# file of answers from the Python client).
gateway <- function() {
  url <- Sys.getenv("SAFEROOM_TEST_URL")
  if (!nzchar(url)) skip("no gateway: run tests/test_r_client.py, which starts one and sets SAFEROOM_TEST_URL")
  list(url = url, token = Sys.getenv("SAFEROOM_TEST_TOKEN"), analyst = Sys.getenv("SAFEROOM_TEST_ANALYST_TOKEN"),
       limited = Sys.getenv("SAFEROOM_TEST_LIMITED_TOKEN"),
       expected = jsonlite::fromJSON(Sys.getenv("SAFEROOM_TEST_EXPECTED"), simplifyDataFrame = FALSE))
}

connect <- function(token = gateway()$token) {
  DBI::dbConnect(saferoom(), url = gateway()$url, token = token)
}
