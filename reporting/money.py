"""Conversion values in the advertiser's currency, converted when read.

The kept sums (``conversion_stats``) and the candidates keep each conversion's own currency, and
every reader converts with the rates posted by then (``POST /v1/exchange-rates``), so a rate
posted later re-values conversions attributed earlier. A value counts with the latest rate of its
currency on or before the conversion's day in the advertiser's time zone. A value in the
advertiser's own currency, or sent without a currency, needs no rate. A conversion whose currency
has no rate by its day still counts as a conversion, but its value is left out and it counts in
``unconverted_conversions`` (a sum of credits, as ``conversions`` is).

ClickHouse 18.16 has no ASOF JOIN, so each currency's rates are joined as one array sorted by
day, and a row's rate is the last element of it on or before its day: one small hash join of a
row per currency, and a scan of that currency's days per summed row (never per conversion).
"""

from __future__ import annotations


def params(advertiser_id: str, settings: dict) -> dict:
    """The parameters the SQL below needs, besides the query's own."""
    return {"money_adv": advertiser_id, "money_currency": settings["currency"], "money_tz": settings["timezone"]}


def day_sql(minute_column: str) -> str:
    """The day, in the advertiser's time zone, of a UTC DateTime column: the day a rate is taken for."""
    return f"toDate({minute_column}, %(money_tz)s)"


def currency_sql(value: str, currency: str) -> str:
    """The currency to convert from: none for a value of 0, which is 0 in any currency."""
    return f"if({value} = 0, '', {currency})"


def rates_sql(db: str) -> str:
    """Per currency, its rate days ascending and the rates of those days (the latest posting of each)."""
    return f"""
        SELECT currency, arrayMap(p -> tupleElement(p, 1), pairs) AS rate_days,
               arrayMap(p -> tupleElement(p, 2), pairs) AS rate_values
        FROM (SELECT currency, arraySort(groupArray((day, rate))) AS pairs
              FROM (SELECT currency, day, argMax(rate, version) AS rate FROM {db}.exchange_rates
                    WHERE advertiser_id = %(money_adv)s AND advertiser_currency = %(money_currency)s
                    GROUP BY currency, day)
              GROUP BY currency)"""


def valued_sql(inner: str, keys: list[str], db: str) -> str:
    """``inner`` yields rows (keys..., currency, day, cs, vs) of conversions ``cs`` worth ``vs`` in
    ``currency``; the answer is (keys..., c, v, u): the conversions, their value in the advertiser's
    currency and the conversions left out of it for want of a rate (other names than the inner
    ones: an alias is visible in the whole query, and sum(c) inside sum() is refused).

    ``day >= toDate(0)`` (always true) names the day outside the lambda too: 18.16 prunes a column
    only lambdas use from a subquery.
    """
    head = "".join(k + ", " for k in keys)
    group = f"GROUP BY {', '.join(keys)}" if keys else ""
    return f"""
        SELECT {head}sum(cs) AS c, sum(if(own, vs, if(n > 0, vs * arrayElement(rate_values, n), 0.))) AS v,
               sum(if(own OR n > 0, 0., cs)) AS u
        FROM (SELECT *, currency IN ('', %(money_currency)s) AS own,
                     arrayCount(x -> x <= day, rate_days) * (day >= toDate(0)) AS n
              FROM ({inner}) AS conversions ANY LEFT JOIN ({rates_sql(db)}) AS rates USING currency)
        {group}"""
