# dbplyr: the second edition of its backend interface, and PostgreSQL's SQL (which DuckDB reads too).

dbplyr_edition.SaferoomConnection <- function(con) 2L

sql_translation.SaferoomConnection <- function(con) {
  dbplyr::sql_translation(dbplyr::simulate_postgres())
}
