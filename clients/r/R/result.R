# A result: the rows the gateway sent, handed out in chunks by dbFetch.

setMethod("show", "SaferoomResult", function(object) {
  cat("<SaferoomResult> ", object@statement, "\n", sep = "")
})

setMethod("dbIsValid", "SaferoomResult", function(dbObj, ...) isTRUE(dbObj@state$open))

setMethod("dbClearResult", "SaferoomResult", function(res, ...) {
  if (!dbIsValid(res)) warning("the result is already cleared", call. = FALSE)
  res@state$open <- FALSE
  res@state$frame <- NULL
  invisible(TRUE)
})

sr_open <- function(res) {
  if (!dbIsValid(res)) stop("the result is cleared", call. = FALSE)
  res@state
}

setMethod("dbFetch", "SaferoomResult", function(res, n = -1, ...) {
  state <- sr_open(res)
  if (length(n) != 1 || is.na(n) || !is.numeric(n) || (n < 0 && n != -1) || (is.finite(n) && n != trunc(n))) {
    stop("n must be a whole number, -1 or Inf", call. = FALSE)
  }
  total <- nrow(state$frame)
  last <- if (n < 0 || is.infinite(n)) total else min(total, state$position + n)
  if (state$position == 0 && last == total) {  # all of it: no copy
    state$position <- total
    return(state$frame)
  }
  rows <- seq_len(last - state$position) + state$position
  state$position <- last
  chunk <- state$frame[rows, , drop = FALSE]
  rownames(chunk) <- NULL
  chunk
})

setMethod("dbHasCompleted", "SaferoomResult", function(res, ...) {
  state <- sr_open(res)
  state$position >= nrow(state$frame)
})

setMethod("dbGetStatement", "SaferoomResult", function(res, ...) {
  sr_open(res)
  res@statement
})

setMethod("dbGetRowCount", "SaferoomResult", function(res, ...) sr_open(res)$position)

setMethod("dbGetRowsAffected", "SaferoomResult", function(res, ...) {
  sr_open(res)
  NA_integer_
})

setMethod("dbColumnInfo", "SaferoomResult", function(res, ...) {
  frame <- sr_open(res)$frame
  data.frame(name = names(frame), type = vapply(frame, function(column) class(column)[1], ""),
             stringsAsFactors = FALSE, row.names = NULL)
})

setMethod("dbBind", "SaferoomResult", function(res, params, ...) {
  stop("saferoom does not bind parameters: write the values into the query", call. = FALSE)
})

setMethod("dbGetInfo", "SaferoomResult", function(dbObj, ...) {
  state <- sr_open(dbObj)
  list(statement = dbObj@statement, row.count = state$position, rows.affected = NA_integer_,
       has.completed = state$position >= nrow(state$frame), notices = as.character(unlist(state$status$notices)))
})

# The gateway's `vectors` body (docs/gateway.md): a header, batches of columns, a status; each frame a tag
# byte, the payload's length and the payload. `take` is given the body piece by piece as it arrives and
# reads each frame once it is whole, so the rows are decoded while the gateway is still sending.
sr_frames <- function() {
  pieces <- list()
  have <- 0
  need <- 5
  head <- NULL
  status <- NULL
  batches <- list()
  framed <- NA  # whether the body is frames at all (an error is JSON)
  take <- function(piece) {
    pieces[[length(pieces) + 1]] <<- piece
    have <<- have + length(piece)
    if (is.na(framed)) framed <<- piece[1] == charToRaw("H")
    if (isTRUE(framed) && have >= need) read()
  }
  read <- function() {
    pending <- do.call(c, pieces)
    input <- rawConnection(pending)
    on.exit(close(input))
    used <- 0
    repeat {
      if (length(pending) - used < 5) break
      tag <- rawToChar(readBin(input, "raw", 1))
      size <- readBin(input, "integer", size = 4, endian = "little")
      if (length(pending) - used - 5 < size) break
      if (tag == "B") {
        batches[[length(batches) + 1]] <<- sr_batch(input, head$kinds)
      } else if (tag == "H") {
        head <<- sr_json(readBin(input, "raw", size))
      } else {
        status <<- sr_json(readBin(input, "raw", size))
      }
      used <- used + 5 + size
    }
    pieces <<- if (used < length(pending)) list(pending[(used + 1):length(pending)]) else list()
    have <<- length(pending) - used
    need <<- if (have >= 5) 5 + readBin(pending[used + 2:5], "integer", size = 4, endian = "little") else 5
  }
  rest <- function() do.call(c, pieces)
  result <- function() {
    if (is.null(head) || is.null(status)) stop("the gateway's answer ended early: run the query again", call. = FALSE)
    columns <- lapply(seq_along(head$columns), function(i) {
      sr_typed(unlist(lapply(batches, `[[`, i)), head$kinds[i], head$types[i])
    })
    names(columns) <- head$columns
    rows <- if (length(columns)) length(columns[[1]]) else 0L
    list(frame = structure(columns, class = "data.frame", row.names = .set_row_names(rows)),
         decision = head$decision, status = status)
  }
  list(take = take, rest = rest, result = result)
}

sr_batch <- function(input, kinds) {
  rows <- readBin(input, "integer", size = 4, endian = "little")
  lapply(kinds, function(kind) {
    flags <- as.integer(readBin(input, "raw", 1))
    valid <- if (bitwAnd(flags, 1L)) readBin(input, "raw", rows) == as.raw(1)
    values <- switch(kind,
      i = readBin(input, "integer", rows, size = 4, endian = "little"),
      d = readBin(input, "double", rows, size = 8, endian = "little"),
      l = readBin(input, "integer", rows, size = 1, signed = FALSE) == 1L,
      s = {
        text <- readBin(input, "character", rows)
        if (bitwAnd(flags, 2L)) Encoding(text) <- "UTF-8"  # ASCII needs no mark (and marking 1M strings costs)
        text
      })
    if (!is.null(valid)) values[!valid] <- NA
    values
  })
}

sr_typed <- function(values, kind, type) {
  if (is.null(values)) values <- switch(kind, i = integer(), d = double(), l = logical(), character())
  if (grepl("^date", type)) return(structure(values, class = "Date"))
  if (grepl("^timestamp", type)) return(.POSIXct(values, tz = "UTC"))
  values
}
