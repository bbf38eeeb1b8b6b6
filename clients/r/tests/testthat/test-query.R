test_that("a query returns the user's rows with the right types", {
  con <- connect(gateway()$analyst)
  on.exit(DBI::dbDisconnect(con))
  rows <- DBI::dbGetQuery(con, "select order_id, amount, region, created_at from prod.orders order by order_id limit 5")
  expected <- gateway()$expected$orders
  expect_equal(rows$order_id, vapply(expected, function(row) row$order_id, 0))
  expect_identical(rows$amount, vapply(expected, function(row) row$amount, 0))  # DECIMAL: the nearest double
  expect_equal(unique(rows$region), "EU")  # alice's row filter
  expect_s3_class(rows$created_at, "POSIXct")
  expect_equal(format(rows$created_at, "%Y-%m-%d %H:%M:%S", tz = "UTC"),
               vapply(expected, function(row) row$created_at, ""))
})

test_that("each engine type arrives as its R type, NULL as NA", {
  con <- connect()
  on.exit(DBI::dbDisconnect(con))
  row <- DBI::dbGetQuery(con, paste(
    "select 7::INTEGER as i, 9007199254740993::BIGINT as big, 1.5::DOUBLE as d, 12.34::DECIMAL(10,2) as m,",
    "DATE '2024-02-29' as day, TIMESTAMPTZ '2024-02-29 12:00:00+00' as ts, true as ok, 'x' as s,",
    "NULL::INTEGER as no_i, NULL::DOUBLE as no_d, NULL::VARCHAR as no_s, NULL::DATE as no_day, NULL::BOOLEAN as no_ok,",
    "'nan'::DOUBLE as nan, 'inf'::DOUBLE as inf"))
  expect_identical(row$i, 7L)
  expect_identical(row$big, 9007199254740992)  # BIGINT is a double, exact to 2^53
  expect_identical(row$d, 1.5)
  expect_identical(row$m, 12.34)
  expect_identical(row$day, as.Date("2024-02-29"))
  expect_identical(row$ts, as.POSIXct("2024-02-29 12:00:00", tz = "UTC"))
  expect_identical(row$ok, TRUE)
  expect_identical(row$s, "x")
  expect_identical(row$no_i, NA_integer_)
  expect_identical(row$no_d, NA_real_)
  expect_identical(row$no_s, NA_character_)
  expect_identical(row$no_day, as.Date(NA))
  expect_identical(row$no_ok, NA)
  expect_true(is.nan(row$nan))
  expect_identical(row$inf, Inf)
})

test_that("text keeps its characters", {
  con <- connect()
  on.exit(DBI::dbDisconnect(con))
  row <- DBI::dbGetQuery(con, "select 'Zoë ☃ 東京' as s, '' as empty")
  expect_identical(row$s, "Zo\u00eb \u2603 \u6771\u4eac")
  expect_identical(Encoding(row$s), "UTF-8")  # readable as such in any locale
  expect_identical(row$empty, "")
})

test_that("a refused column raises saferoom_rejected with the explanation, column, tag and roles", {
  con <- connect(gateway()$analyst)
  on.exit(DBI::dbDisconnect(con))
  refusal <- expect_error(DBI::dbGetQuery(con, "select pan from prod.cards"), class = "saferoom_rejected")
  expect_match(refusal$explanation, "tagged `pci`")
  expect_match(conditionMessage(refusal), "Roles that may see it: investigator")
  expect_identical(refusal$column, "prod.cards.pan")
  expect_identical(refusal$tag, "pci")
  expect_identical(refusal$roles, "investigator")
  expect_identical(refusal$threats, "card-theft")
})

test_that("a bad token is an authentication error", {
  url <- gateway()$url
  expect_error(DBI::dbConnect(saferoom(), url = url, token = "sr_0000_not-a-token"), class = "saferoom_auth_error")
  expect_error(DBI::dbConnect(saferoom(), url = url, token = ""), class = "saferoom_auth_error")
})

test_that("the URL and token come from SAFEROOM_URL and SAFEROOM_TOKEN, then the file login writes", {
  g <- gateway()
  con <- withr::with_envvar(c(SAFEROOM_URL = g$url, SAFEROOM_TOKEN = g$analyst), DBI::dbConnect(saferoom()))
  expect_identical(DBI::dbGetInfo(con)$username, "alice")
  DBI::dbDisconnect(con)
  config <- tempfile()
  dir.create(file.path(config, "saferoom"), recursive = TRUE)
  writeLines(jsonlite::toJSON(list(url = g$url, token = g$token), auto_unbox = TRUE),
             file.path(config, "saferoom", "credentials.json"))
  con <- withr::with_envvar(c(SAFEROOM_URL = "", SAFEROOM_TOKEN = "", XDG_CONFIG_HOME = config),
                           DBI::dbConnect(saferoom()))
  expect_identical(DBI::dbGetInfo(con)$username, "ivan")
  expect_false(grepl(g$token, paste(capture.output(print(con), str(con)), collapse = "\n"), fixed = TRUE))
  DBI::dbDisconnect(con)
  expect_false(DBI::dbIsValid(con))
})

test_that("chunked dbFetch of a large result adds up to the whole", {
  con <- connect()
  on.exit(DBI::dbDisconnect(con))
  expected <- gateway()$expected$large
  res <- DBI::dbSendQuery(con, expected$sql)
  rows <- 0
  total <- 0
  chunks <- 0
  while (!DBI::dbHasCompleted(res)) {
    chunk <- DBI::dbFetch(res, n = 250000)
    rows <- rows + nrow(chunk)
    total <- total + sum(chunk$amount)
    chunks <- chunks + 1
  }
  expect_identical(DBI::dbGetRowCount(res), rows)
  DBI::dbClearResult(res)
  expect_equal(rows, expected$rows)
  expect_gte(rows, 1e6)
  expect_equal(chunks, ceiling(expected$rows / 250000))
  expect_equal(total, expected$amount, tolerance = 1e-9)
})

test_that("a result cut at the role's limit says so", {
  con <- connect(gateway()$limited)
  on.exit(DBI::dbDisconnect(con))
  expect_warning(rows <- DBI::dbGetQuery(con, "select order_id from prod.orders"), "max_rows=5")
  expect_identical(nrow(rows), 5L)
})

test_that("the catalog is the role's", {
  con <- connect(gateway()$analyst)
  on.exit(DBI::dbDisconnect(con))
  expect_setequal(DBI::dbListTables(con), c("prod.customers", "prod.cards", "prod.orders"))
  expect_identical(DBI::dbListFields(con, "prod.cards"), c("card_id", "customer_id"))  # pan is denied
  expect_true(DBI::dbExistsTable(con, DBI::Id(schema = "prod", table = "orders")))
  expect_false(DBI::dbExistsTable(con, "prod.nothing"))
  expect_error(DBI::dbListFields(con, "prod.nothing"), "no table prod.nothing")
})

test_that("saferoom_explain says what each column will be and why", {
  con <- connect(gateway()$analyst)
  on.exit(DBI::dbDisconnect(con))
  explained <- saferoom_explain(con, "select email, region from prod.customers join prod.orders using (customer_id)")
  email <- explained[explained$column == "email", ]
  expect_identical(email$action, "tokenize")
  expect_identical(email$tag, "pii")
  expect_match(email$reason, "pii")
  expect_identical(attr(explained, "decision"), "allowed")
  refused <- saferoom_explain(con, "select pan from prod.cards")
  expect_identical(attr(refused, "decision"), "refused")
  expect_match(attr(refused, "refusal"), "tagged `pci`")
})

test_that("dbplyr's group-by gives the Python client's answer", {
  skip_if_not_installed("dbplyr")
  con <- connect()
  on.exit(DBI::dbDisconnect(con))
  orders <- dplyr::tbl(con, dbplyr::in_schema("prod", "orders"))
  counted <- dplyr::collect(dplyr::summarise(dplyr::group_by(orders, region), n = dplyr::n(),
                                             total = sum(amount, na.rm = TRUE)))
  counted <- counted[order(counted$region), ]
  expected <- gateway()$expected$regions
  expect_identical(counted$region, vapply(expected, function(row) row$region, ""))
  expect_equal(counted$n, vapply(expected, function(row) row$n, 0))
  expect_equal(counted$total, vapply(expected, function(row) row$total, 0))
})
