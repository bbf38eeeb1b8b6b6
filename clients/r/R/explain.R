# What a query will see, column by column, before it runs.

saferoom_explain <- function(con, sql) {
  body <- list(sql = sql)
  if (!is.null(con@state$role)) body$role <- con@state$role
  decision <- sr_request(sr_live(con), "POST", "/v1/explain", body = body)
  rows <- lapply(decision$columns, function(output) {
    lapply(output$sources, function(source) {
      data.frame(column = output$name, source = source$name, action = source$action,
                 tag = if (is.null(source$tag)) NA_character_ else source$tag,
                 reason = source$reason, stringsAsFactors = FALSE)
    })
  })
  frame <- do.call(rbind, c(list(data.frame(column = character(), source = character(), action = character(),
                                            tag = character(), reason = character())), unlist(rows, recursive = FALSE)))
  attr(frame, "decision") <- decision$decision
  attr(frame, "refusal") <- decision$refusal$message
  attr(frame, "notes") <- as.character(unlist(decision$notes))
  frame
}
